//! The helper scripts/gpu-check.sh runs beside the CLI on a GPU machine (built with it by scripts/gpu-prepare.sh):
//!
//!   gpu_check kernels [--device cpu|cuda|cuda:N] [--bench full|small|none] [--json FILE]
//!       the fused Triton kernels, each against the f64 reference and candle's composition at odd sizes (f32, bf16,
//!       f16), then fused vs composed time per operation (`flux_img2img::kernels::check`). On the CPU (a dry run of
//!       the same flow) the ops' CPU kernels stand in for the fused ones in f32.
//!   gpu_check psnr A.png B.png
//!       PSNR of two images in dB (8-bit RGB, as the parity tests measure it), so the script needs no Python.
//!
//! Exit 0 every check passed, 1 some failed, 2 could not run.

use candle_core::{DType, Device};
use flux_img2img::kernels::check;

struct Opts {
    device: Device,
    bench: Option<bool>,
    json: Option<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let (mut device, mut bench, mut json) = (Device::Cpu, Some(false), None);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--device" => {
                let v = value()?;
                device = match v.strip_prefix("cuda") {
                    None if v == "cpu" => Device::Cpu,
                    Some(n) => {
                        let ordinal =
                            n.strip_prefix(':').unwrap_or("0").parse().map_err(|_| format!("bad device {v}"))?;
                        Device::new_cuda(ordinal).map_err(|e| format!("cannot open {v}: {e}"))?
                    }
                    None => return Err(format!("bad device {v}: cpu, cuda or cuda:N")),
                }
            }
            "--bench" => {
                bench = match value()?.as_str() {
                    "full" => Some(true),
                    "small" => Some(false),
                    "none" => None,
                    v => return Err(format!("bad --bench {v}: full, small or none")),
                }
            }
            "--json" => json = Some(value()?),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Opts { device, bench, json })
}

fn e(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1e}"))
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("kernels") => kernels(args),
        Some("psnr") => psnr(args),
        _ => {
            eprintln!("usage: gpu_check kernels [--device D] [--bench full|small|none] [--json FILE] | psnr A B");
            2.into()
        }
    }
}

fn psnr(args: impl Iterator<Item = String>) -> std::process::ExitCode {
    use flux_img2img::image_io::{load_rgb, psnr};
    let paths: Vec<String> = args.collect();
    let [a, b] = paths.as_slice() else {
        eprintln!("usage: gpu_check psnr A.png B.png");
        return 2.into();
    };
    match (load_rgb(a.as_ref()), load_rgb(b.as_ref())) {
        (Ok(a), Ok(b)) if a.dimensions() == b.dimensions() => {
            println!("{:.2}", psnr(&a, &b));
            0.into()
        }
        (Ok(_), Ok(_)) => {
            eprintln!("error: {a} and {b} differ in size");
            1.into()
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            2.into()
        }
    }
}

fn kernels(args: impl Iterator<Item = String>) -> std::process::ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("error: {msg}");
            return 2.into();
        }
    };
    let rows = check::check(&opts.device);
    println!("{:<20} {:<36} {:<5} {:>8} {:>8} {:>8}  result", "op", "case", "dtype", "fused", "composed", "bound");
    for r in &rows {
        let verdict = if r.passed { "pass" } else { "FAIL" };
        let (f, c) = (e(r.fused_err), e(r.composed_err));
        println!("{:<20} {:<36} {:<5} {f:>8} {c:>8} {:>8.1e}  {verdict}: {}", r.op, r.case, r.dtype, r.bound, r.note);
    }
    let failed = rows.iter().filter(|r| !r.passed).count();
    println!("kernels-check: {} rows, {failed} failed", rows.len());
    let bench = match opts.bench.map(|full| check::bench(&opts.device, bench_dtype(&opts.device), full)) {
        Some(Err(err)) => {
            eprintln!("error: benchmark: {err}");
            return 2.into();
        }
        Some(Ok(b)) => b,
        None => Vec::new(),
    };
    if !bench.is_empty() {
        println!("\n{:<20} {:<34} {:>10} {:>11} {:>8}  note", "op", "shape", "fused ms", "composed ms", "speedup");
    }
    for b in &bench {
        let fused = b.fused_ms.map_or("-".into(), |v| format!("{v:.3}"));
        let speedup = b.fused_ms.map_or("-".into(), |f| format!("{:.2}x", b.composed_ms / f));
        println!("{:<20} {:<34} {fused:>10} {:>11.3} {speedup:>8}  {}", b.op, b.shape, b.composed_ms, b.note);
    }
    if let Some(path) = &opts.json {
        let v = serde_json::json!({"checks": rows, "bench": bench});
        if let Err(err) = std::fs::write(path, v.to_string()) {
            eprintln!("error: cannot write {path}: {err}");
            return 2.into();
        }
    }
    u8::from(failed > 0).into()
}

/// bf16 on a GPU (what FLUX runs there); f32 on the CPU, which has no bf16 matmul.
fn bench_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

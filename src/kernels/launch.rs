//! One kernel launch worked out on the host, with no GPU: takes a [`Spec`] (the kernel's arguments by contract name
//! and the grid's symbols, as an operation computes them from its tensors' shapes and device addresses) and the
//! manifest [`Variant`] chosen for it, gives a [`Launch`]: grid, block, dynamic shared memory and the argument
//! values in the variant's parameter order, hidden scratch pointers included. The CUDA side (`gpu`) only allocates,
//! loads and calls `cuLaunchKernel` with it, so everything here is tested on the CPU against the manifest.

use super::manifest::{Arg, Miss, ParamType, Variant};

/// The largest value an `i32` kernel parameter (a size or element offset) may take.
const I32_MAX: usize = i32::MAX as usize;

/// A launch's arguments by the names of the contract in kernels/triton/README.md, and the values of the grid's
/// symbols that are not arguments (B, G).
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub args: Vec<(&'static str, Arg)>,
    pub symbols: Vec<(&'static str, i64)>,
    /// Set when an int did not fit in an i32.
    too_large: bool,
}

impl Spec {
    pub fn new() -> Self {
        Self::default()
    }

    /// A device address.
    pub fn ptr(mut self, name: &'static str, addr: u64) -> Self {
        self.args.push((name, Arg::Ptr(addr)));
        self
    }

    /// An `i32` (a size, stride or offset): remembers when it does not fit.
    pub fn int(mut self, name: &'static str, v: usize) -> Self {
        self.too_large |= v > I32_MAX;
        self.args.push((name, Arg::I32(v.min(I32_MAX) as i32)));
        self
    }

    pub fn float(mut self, name: &'static str, v: f32) -> Self {
        self.args.push((name, Arg::F32(v)));
        self
    }

    /// A grid symbol that is no argument. The grid itself is checked against the axis limits in [`finish`].
    pub fn sym(mut self, name: &'static str, v: usize) -> Self {
        self.symbols.push((name, v as i64));
        self
    }

    /// Fails when a size is past what the kernels' i32 arithmetic takes (the caller runs the composition).
    pub fn check_size(&self, elements: &[usize]) -> Result<(), Miss> {
        if self.too_large || elements.iter().any(|&n| n > I32_MAX) {
            return Err(Miss::TooLarge);
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> Option<i64> {
        let arg = self.args.iter().find(|(n, _)| *n == name).and_then(|(_, a)| match a {
            Arg::I32(v) => Some(*v as i64),
            _ => None,
        });
        arg.or_else(|| self.symbols.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }
}

/// One value of a launch, in parameter order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Arg(Arg),
    /// A hidden scratch pointer: null when `bytes` is 0, else a fresh buffer of `bytes` aligned to `align`.
    Scratch {
        bytes: u64,
        align: u64,
    },
}

/// Everything `cuLaunchKernel` takes besides the function and the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
    pub values: Vec<Value>,
}

impl Launch {
    /// Whether the grid is empty (Triton launches nothing then, and neither do we).
    pub fn is_empty(&self) -> bool {
        self.grid.0 == 0 || self.grid.1 == 0 || self.grid.2 == 0
    }
}

/// The launch of `v` with `spec`: the grid evaluated from the manifest's rule (axis 0 up to 2³¹ − 1, axes 1 and 2
/// up to 65535), `threads_per_block` threads, `shared_bytes` of dynamic shared memory, and one value per manifest
/// parameter, looked up by name and type-checked. Every argument of the spec must be consumed and every
/// requirement of an aligned variant met (the real output addresses are only known here).
pub fn finish(v: &Variant, spec: &Spec) -> Result<Launch, String> {
    let what = || format!("{} ({})", v.kernel, v.variant);
    let mut grid = [0u32; 3];
    for (axis, rule) in v.grid.iter().enumerate() {
        let n = rule.eval(&|s| spec.lookup(s)).map_err(|e| format!("{}: {e}", what()))?;
        let limit = if axis == 0 { i32::MAX as i64 } else { 65535 };
        if !(0..=limit).contains(&n) {
            return Err(format!("{}: grid axis {axis} = {n} is outside 0..={limit}", what()));
        }
        grid[axis] = n as u32;
    }
    if v.threads_per_block != 32 * v.num_warps || v.num_ctas != 1 {
        return Err(format!(
            "{}: {} threads for {} warps, {} CTAs",
            what(),
            v.threads_per_block,
            v.num_warps,
            v.num_ctas
        ));
    }
    if !v.accepts(&spec.args) {
        return Err(format!("{}: the launch breaks the variant's alignment requirements", what()));
    }
    let mut values = Vec::with_capacity(v.params.len());
    for p in &v.params {
        if p.hidden {
            let programs = grid.iter().map(|&g| g as u64).product::<u64>();
            values.push(Value::Scratch { bytes: programs * p.bytes_per_program, align: p.align.max(1) });
            continue;
        }
        let arg = spec.args.iter().find(|(n, _)| *n == p.name).map(|(_, a)| *a);
        let ok = matches!(
            (p.ty, arg),
            (ParamType::Ptr, Some(Arg::Ptr(_)))
                | (ParamType::I32, Some(Arg::I32(_)))
                | (ParamType::F32, Some(Arg::F32(_)))
        );
        match arg {
            Some(a) if ok => values.push(Value::Arg(a)),
            _ => {
                return Err(format!("{}: parameter {} ({:?}) has no matching argument ({arg:?})", what(), p.name, p.ty))
            }
        }
    }
    let named = v.params.iter().filter(|p| !p.hidden).count();
    if named != spec.args.len() {
        let unused: Vec<_> = spec.args.iter().filter(|(n, _)| !v.params.iter().any(|p| p.name == *n)).collect();
        return Err(format!("{}: arguments the kernel does not take: {unused:?}", what()));
    }
    Ok(Launch {
        grid: (grid[0], grid[1], grid[2]),
        block: (v.threads_per_block, 1, 1),
        shared_bytes: v.shared_bytes,
        values,
    })
}

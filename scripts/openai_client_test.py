"""A real client of the ecosystem against `flux-img2img serve`: the `openai` package's images.generate and
images.edit (base_url pointed at the server), each image compared byte for byte with the CLI's for the same
request. Starts the server itself on a free loopback port with a tiny fixture model, and stops it.
Not part of CI (it needs Python and the openai package: pip install -r scripts/requirements.txt).
usage: python scripts/openai_client_test.py [BINARY] [MODEL]
       (defaults: target/debug/flux-img2img, tests/fixtures/tiny-schnell)"""
import base64, os, shutil, subprocess, sys, tempfile

import openai

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "target/debug/flux-img2img"))
model = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "tests/fixtures/tiny-schnell"))
work = tempfile.mkdtemp(prefix="openai-client-")
shutil.copy(os.path.join(root, "tests/fixtures/images/photo-96x64.png"), os.path.join(work, "input.png"))

server = subprocess.Popen([binary, "serve", "--port", "0", "--model", model], stderr=subprocess.PIPE, text=True)
try:
    for line in server.stderr:
        if line.startswith("listening on "):
            base = line.split()[-1]
            break
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused-without-a-key-file")

    def cli(out, *flags):
        subprocess.run([binary, "--model", model, *flags, "-q", "-o", out], cwd=work, check=True, stdout=subprocess.DEVNULL)
        return open(os.path.join(work, out), "rb").read()

    results = []
    gen = client.images.generate(model="dall-e-2", prompt="a lighthouse at dawn", size="64x48", n=1,
                                 response_format="b64_json", extra_body={"seed": 3, "steps": 2})
    ours = base64.b64decode(gen.data[0].b64_json)
    want = cli("gen.png", "--prompt", "a lighthouse at dawn", "--width", "64", "--height", "48", "--seed", "3",
               "--steps", "2")
    results.append(("images.generate", ours == want))

    with open(os.path.join(work, "input.png"), "rb") as f:
        edit = client.images.edit(model="dall-e-2", image=("input.png", f, "image/png"), prompt="a red house", n=1,
                                  response_format="b64_json", extra_body={"seed": 7, "steps": 4, "strength": 0.7})
    ours = base64.b64decode(edit.data[0].b64_json)
    want = cli("edit.png", "--image", "input.png", "--prompt", "a red house", "--seed", "7", "--steps", "4",
               "--strength", "0.7")
    results.append(("images.edit", ours == want))

    try:
        client.images.generate(prompt="x", size="banana", response_format="b64_json")
        results.append(("bad size refused", False))
    except openai.APIStatusError as e:
        print(f"  (the refusal: {e.status_code} {e.message})")
        results.append(("bad size refused (400)", e.status_code == 400 and "size" in e.message))
finally:
    server.terminate()
    server.wait(timeout=30)

print(f"openai {openai.__version__} against {base}:")
for name, ok in results:
    print(f"  {name}: {'identical to the CLI' if ok and 'refused' not in name else 'ok' if ok else 'FAILED'}")
shutil.rmtree(work)
sys.exit(0 if all(ok for _, ok in results) else 1)

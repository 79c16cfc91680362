"""Which llama.cpp build makes the golden data of one kernel tier, and where it goes.

mcc's binaries carry one copy of their kernels per tier (runtime/src/tier.rs), and each
SIMD tier mirrors llama.cpp built for the same instruction set. Golden data that depends
on llama.cpp's arithmetic is therefore kept per tier, in tests/golden/<tier>/:

  avx512  llama.cpp built with GGML_NATIVE=ON on an AVX-512 machine (llama-ref.sh's
          default tier); only an AVX-512 machine can make it. On a CPU with AVX512-FP16
          (Intel Sapphire Rapids and later) the native build does its f16 vector ops (the
          attention's dot products and running sums) in fp16 arithmetic, which no mcc tier
          mirrors; there the reference is built here with the AVX-512 set named instead
          (F/BW/VL/VNNI/VBMI/BF16, as on Zen 4), in $MCC_CACHE/llama.cpp/build-avx512
  avx2    llama.cpp built with AVX2/FMA/F16C/BMI2 on and AVX-512 off
          (LLAMA_REF_TIER=avx2 llama-ref.sh); any AVX2 machine can make it

Every script that writes such data takes `--tier avx512|avx2` (default: the best tier
of this machine). tests/golden/<tier>/llama-build.txt records the build that made it.
LLAMA_BIN=dir overrides the tools' directory (then the caller vouches for the tier).
"""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
REF = ROOT.parent / "shared/scripts/llama-ref.sh"
# mcc's tier -> llama-ref.sh's LLAMA_REF_TIER
REF_TIER = {"avx512": "native", "avx2": "avx2"}
AVX512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni"}


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def best_tier():
    return "avx512" if AVX512 <= cpu_flags() else "avx2"


def take_tier(argv):
    """Removes `--tier NAME` from argv and returns the tier (default: this machine's
    best). Sets LLAMA_REF_TIER for every llama.cpp tool the script then builds or runs,
    and MCC_CPU for every mcc binary it runs, so that both sides run the tier."""
    tier = best_tier()
    if "--tier" in argv:
        i = argv.index("--tier")
        if i + 1 >= len(argv):
            sys.exit("--tier needs a value: avx512 or avx2")
        tier = argv[i + 1]
        del argv[i:i + 2]
    if tier not in REF_TIER:
        sys.exit(f"--tier {tier}: expected avx512 or avx2")
    if tier == "avx512" and not AVX512 <= cpu_flags():
        sys.exit("--tier avx512: this CPU lacks AVX-512 (F/BW/CD/DQ/VL/VNNI); llama.cpp's "
                 "AVX-512 goldens are made by its native build on an AVX-512 machine")
    os.environ["LLAMA_REF_TIER"] = REF_TIER[tier]
    os.environ["MCC_CPU"] = tier
    return tier


# The AVX-512 tier's llama.cpp build where the native one is not it (see above).
AVX512_CMAKE = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
                "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=ON",
                "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON",
                "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
TOOLS = ["llama-completion", "llama-perplexity", "llama-bench", "llama-tokenize"]


def explicit_avx512_bin():
    """llama.cpp built for the AVX-512 set without AVX512-FP16, made on first use from
    the sources that llama-ref.sh (or scripts/fetch-models.sh) unpacked."""
    cache = pathlib.Path(os.environ.get("MCC_CACHE", pathlib.Path.home() / ".cache/mcc"))
    src, build = cache / "llama.cpp", cache / "llama.cpp/build-avx512"
    if all((build / "bin" / t).exists() for t in TOOLS):
        return build / "bin"
    if not (src / "CMakeLists.txt").is_file():
        sys.exit(f"{src}: no llama.cpp sources; run scripts/fetch-models.sh first")
    print("building llama.cpp for the avx512 tier (no AVX512-FP16) into "
          f"{build}, once (~10 min on 2 cores)", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja",
                    "-DCMAKE_BUILD_TYPE=Release", *AVX512_CMAKE, "-DLLAMA_CURL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DLLAMA_OPENSSL=OFF"], check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", str(build), f"-j{os.cpu_count()}", "--target",
                    *TOOLS], check=True, stdout=sys.stderr)
    return build / "bin"


def tier_bin(tier):
    """The directory of the tools of llama.cpp's build for kernel tier `tier`."""
    if tier == "avx512" and "avx512_fp16" in cpu_flags():
        return explicit_avx512_bin()
    env = dict(os.environ, LLAMA_REF_TIER=REF_TIER[tier])
    out = subprocess.run(["bash", str(REF)], check=True, capture_output=True, text=True,
                         env=env)
    return pathlib.Path(out.stdout.strip())


def llama_bin():
    """The directory of llama.cpp's tools for the tier take_tier chose."""
    if os.environ.get("LLAMA_BIN"):
        return pathlib.Path(os.environ["LLAMA_BIN"])
    return tier_bin(os.environ.get("MCC_CPU", best_tier()))


def golden_dir(tier, sub=""):
    """tests/golden/<tier>/<sub>, created, with llama-build.txt saying which build of
    llama.cpp makes the tier's files."""
    d = ROOT / "tests/golden" / tier
    (d / sub).mkdir(parents=True, exist_ok=True)
    bin_dir = llama_bin()
    cache = bin_dir.parent / "CMakeCache.txt"
    flags = []
    if cache.is_file():
        for line in cache.read_text().splitlines():
            if line.startswith("GGML_") and ":BOOL=" in line:
                name, value = line.split(":BOOL=")
                if name[5:] in ("NATIVE", "AVX", "AVX2", "AVX_VNNI", "FMA", "F16C", "BMI2",
                                "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"):
                    flags.append(f"{name}={value}")
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                  if l.startswith("model name")), "unknown")
    how = (f"by ../shared/scripts/llama-ref.sh with LLAMA_REF_TIER={REF_TIER[tier]}"
           if bin_dir.parent.name != "build-avx512" else "by scripts/reftier.py")
    text = (f"Golden data of the {tier} kernel tier: llama.cpp from the llama-cpp-python "
            f"sdist (vendor/llama.cpp), built {how}:\n  {' '.join(flags) or '(flags unknown)'}\n"
            f"on {model} (CPU flags: {' '.join(sorted(AVX512 & cpu_flags())) or 'no AVX-512'}; "
            f"avx2 {'yes' if 'avx2' in cpu_flags() else 'no'}).\n")
    if not os.environ.get("LLAMA_BIN"):
        (d / "llama-build.txt").write_text(text)
    return d / sub

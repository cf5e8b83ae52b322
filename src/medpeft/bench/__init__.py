"""`python -m medpeft.bench` (`make bench`): medpeft's training path against a plain pipeline, the same work
in one invocation, each side in its own process. `cpu.py`: the CPU benchmark (SmolLM2-135M and MiniLM-L6,
issue 12's figures); `gpu.py` (`--gpu`): random-weight models of named real shapes in bf16 on a GPU,
with `--ablate` for each GPU lever before/after (issue 28). `--quick`: tiny random models, for tests."""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medpeft.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random models, seconds: a smoke test of the benchmark")
    parser.add_argument("--gpu", action="store_true", help="the GPU benchmark (medpeft/bench/gpu.py): real shapes, random weights")
    parser.add_argument("--ablate", action="store_true", help="with --gpu: medpeft's LoRA again with each lever turned, one process each")
    parser.add_argument("--only", nargs="+", metavar="WORKLOAD", help="with --gpu: these workloads only (lora-1.7b, full-1.7b, "
                        "lora-t5-large; with --ablate, '--only ablation' runs the ablation alone)")
    parser.add_argument("--models-dir", help="with --gpu: where the random-weight models are built (kept; default a temporary folder)")
    parser.add_argument("--json", help="with --gpu: also write every figure to this JSON file")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="CPU benchmark: medpeft's train.precision (default auto: bf16 on a CPU that multiplies bf16 natively, else fp32)")
    parser.add_argument("--plain-precision", choices=("fp32", "bf16"), default="fp32",
                        help="CPU benchmark: the plain pipeline's (default fp32, the Trainer's default; bf16: its bf16=True)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # a side's own process: medpeft | plain
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--lever", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gpu:
        from medpeft.bench import gpu

        if args.side:
            gpu.run_gpu_side(args.side, args.workload, args.quick, Path(args.models_dir), Path(args.result), args.lever)
            return 0
        return gpu.benchmark_gpu(args.quick, args.ablate, Path(args.models_dir) if args.models_dir else None,
                                 Path(args.json) if args.json else None, args.only)
    from medpeft.bench import cpu

    if args.side:  # --precision is the side's own
        cpu.run_side(args.side, (cpu.QUICK if args.quick else cpu.FULL)[args.workload], Path(args.result), args.precision)
    else:
        cpu.benchmark(args.quick, {"medpeft": args.precision, "plain": args.plain_precision})
    return 0

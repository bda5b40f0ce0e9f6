"""Command line: ``python -m porover run|status|validate|rehearse PARAMS``, ``report RUN`` and ``judge``.

Imports stay inside the commands: a mistyped argument or a validation answers without importing torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m porover`` and the ``porover`` script."""
    parser = argparse.ArgumentParser(prog="porover", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute the stage notebooks of a parameters file with papermill")
    run.add_argument("params", help="parameters file, e.g. params/demo.yaml")
    run.add_argument("--stages", nargs="+", help="only these stages (names from the file's stages)")
    run.add_argument("--run-name", help="folder under outputs/ (default: the file's run_name)")
    run.add_argument("--force", action="store_true", help="run the selected stages even if nothing they read changed")
    run.add_argument("--outputs", default="outputs", help="parent folder of run folders")

    status = commands.add_parser("status", help="per stage: finished, stale (and why) or never run")
    status.add_argument("params", help="parameters file, or a run folder (its manifest names the file)")
    status.add_argument("--run-name", help="folder under outputs/ (default: the file's run_name)")
    status.add_argument("--outputs", default="outputs", help="parent folder of run folders")

    rehearse = commands.add_parser("rehearse", help="run a run file end to end here with stated stand-ins (tiny models, "
                                   "a local endpoint, a few prompts), then print its full-scale costs")
    rehearse.add_argument("params", help="run file, e.g. params/paper.yaml")
    rehearse.add_argument("--prompts", type=int, default=2, help="prompts per prompt set")
    rehearse.add_argument("--tokens", type=int, default=8, help="generation token budgets")
    rehearse.add_argument("--outputs", default="outputs", help="parent folder of run folders")

    check = commands.add_parser("validate", help="validate a parameters file without running anything")
    check.add_argument("params")

    report = commands.add_parser("report", help="write a static HTML report of one or more runs (opens without Jupyter)")
    report.add_argument("runs", nargs="+", help="run folders, e.g. outputs/demo")
    report.add_argument("--out", help="report folder (default: <first run>/report)")
    report.add_argument("--code", action="store_true", help="show code cells on the stage pages")

    judge = commands.add_parser("judge", help="judge refusals in a CSV of prompts and responses")
    judge.add_argument("--input", required=True, help="CSV with a prompt and a response column")
    judge.add_argument("--output", required=True, help="CSV to write, with refusal/status/raw columns added")
    judge.add_argument("--judge", default=None, help="judge name (default: the embedded default judge)")
    judge.add_argument("--prompt-column", default="prompt")
    judge.add_argument("--response-column", default="completion")

    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            from porover.runner import run_pipeline

            from porover.spending import spending_lines

            manifest = run_pipeline(args.params, stages=args.stages, run_name=args.run_name,
                                    force=args.force, outputs=args.outputs)
            if lines := spending_lines(manifest):  # shown whether the run finished or stopped at a cap
                print("\nendpoint cost (USD)\n" + "\n".join(lines))
            failed = [s for s in manifest["stages"].values() if s["status"] == "failed"]
            if failed:
                return 1
            if any(record.get("type") == "evaluate" for record in manifest["stages"].values()):
                from porover.report import build_report, headline_text

                print("\n" + headline_text(manifest["run_dir"]) + f"\n\nreport: {build_report([manifest['run_dir']])}")
            return 0
        if args.command == "status":
            from porover.runner import read_manifest, stage_status

            params, run_name, outputs = args.params, args.run_name, args.outputs
            if Path(params).is_dir():  # a run folder: its manifest names the run file
                run_dir = Path(params)
                params = read_manifest(run_dir).get("params_file") or str(run_dir / "params.yaml")
                run_name, outputs = run_dir.name, str(run_dir.parent)
            for stage, state in stage_status(params, run_name, outputs).items():
                print(f"{stage:24s} {state}")
            return 0
        if args.command == "rehearse":
            from porover.rehearsal import Size, rehearse as rehearse_file

            manifest = rehearse_file(args.params, Size(prompts=args.prompts, tokens=args.tokens), outputs=args.outputs)
            failed = [s for s, r in manifest["stages"].items() if r["status"] == "failed"]
            print(f"rehearsal of {args.params}: " + (f"FAILED at {', '.join(failed)}" if failed else
                                                      f"every stage finished ({manifest['run_dir']})"))
            return 1 if failed else 0
        if args.command == "validate":
            from porover.run_file import load_run_params

            run_params = load_run_params(args.params, environment=False)
            print(f"{args.params}: valid; stages: {', '.join(run_params.stages)}")
            from porover.runner import estimated_usd

            for stage, usd in estimated_usd(run_params).items():
                cap = run_params.stages[stage].params.get("max_cost_usd")
                print(f"  {stage}: worst-case endpoint cost ${usd:,.2f}" + (f" (cap ${cap:,.2f})" if cap is not None
                                                                             else " (no cap: max_cost_usd)"))
            try:
                load_run_params(args.params)
            except ValueError as error:  # the file is right; this machine lacks something to run it
                print(f"to run it here: {str(error).removeprefix('invalid parameters:').strip()}")
            return 0
        if args.command == "report":
            from porover.report import build_report, headline_text

            index = build_report(args.runs, out=args.out, code=args.code)
            for run_dir in args.runs:
                try:
                    print(headline_text(run_dir) + "\n")
                except ValueError:  # a run without evaluations still gets its report
                    pass
            print(f"report: {index}")
            return 0
        from porover.judges import judge_csv

        judge_csv(args.input, args.output, judge=args.judge, prompt_column=args.prompt_column,
                  response_column=args.response_column)
        return 0
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

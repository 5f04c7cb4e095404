"""Knowing when nothing sounds, measured: `hearflow.synthetic.negatives_study.run_negatives_study`.

LVS and HTF (the demo's CPU models) trained with and without negative audio
(``objective.audio_negatives: silence,noise,offscreen``) on the demo's synthetic
benchmark, each calibrated on a validation set and scored on the test set with
negative audio; the table gives mean +- std over seeds and the issue's goals as
measured. Finished (row, seed) results are stored and skipped on a rerun.

    python3 bench/negatives_study.py --out negatives-study              # 4 rows x 3 seeds
    python3 bench/negatives_study.py --out smoke --seeds 0 --quick      # a smoke test, not a result
"""

from __future__ import annotations

import argparse

from hearflow.synthetic.negatives_study import NEGATIVES_ROWS, SEEDS, run_negatives_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="hearflow-negatives-study", help="study folder (resumable)")
    parser.add_argument("--rows", nargs="+", choices=[row.name for row in NEGATIVES_ROWS], help="rows (default all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="seeds (default 0 1 2)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes (a smoke test, not a result)")
    parser.add_argument("--workers", type=int, default=2, help="processes for synthesis and preparation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    run_negatives_study(args.out, rows=args.rows, seeds=tuple(args.seeds), quick=args.quick, workers=args.workers,
                        progress=not args.quiet)


if __name__ == "__main__":
    main()

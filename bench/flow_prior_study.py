"""What does the flow prior do? The study of `hearflow.synthetic.study.run_study` on synthetic data.

Every row (LVS, HTF prior variants, late fusion, training-free baselines, the methods) is trained
and scored on the same synthetic data per seed, and the table gives mean +- std over
seeds of mean cIoU, pick rate and cIoU@0.5, overall and on the `twins` and
`source_moves` subsets, with each row's mean cIoU minus the LVS row's measured in the
same run. Finished (setting, row, seed) results are stored and skipped on a rerun.

    python3 bench/flow_prior_study.py --out study                       # everything
    python3 bench/flow_prior_study.py --out study --settings default --rows lvs channel-maxpool
    python3 bench/flow_prior_study.py --out study --settings small \
        --rows lvs spatial-resnet18-gated ezvsl ezvsl-prior ezvsl-late-fusion ezvsl-ogl    # the method axis

The method axis (`hearflow.synthetic.methods`): EZ-VSL, FNAC and SLAVC each without flow,
with the learned prior, with late fusion and with object-guided localization's analog,
and OGL of LVS and HTF; the ``small`` setting has small objects anywhere. Every table
gives pick rate beside cIoU and the seconds per run. See docs/methods-study.md.

`hearflow demo --study --out DIR` runs every row and setting the same way.
"""

from __future__ import annotations

import argparse

from hearflow.synthetic.study import STUDY_ROWS, STUDY_SEEDS, STUDY_SETTINGS, run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="hearflow-study", help="study folder (resumable)")
    parser.add_argument("--rows", nargs="+", choices=[row.name for row in STUDY_ROWS], help="rows to run (default all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(STUDY_SEEDS), help="seeds (default 0 1 2)")
    parser.add_argument("--settings", nargs="+", choices=list(STUDY_SETTINGS), help="settings (default all)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes (a smoke test, not a result)")
    parser.add_argument("--workers", type=int, default=2, help="processes for synthesis, preparation and loading")
    args = parser.parse_args()
    run_study(args.out, rows=args.rows, seeds=tuple(args.seeds), settings=args.settings, quick=args.quick,
              workers=args.workers)


if __name__ == "__main__":
    main()

"""Keep a random sample of a cosmic-ray session's mutants and mark the rest skipped, so that a
module with a thousand mutants can be measured in minutes (the kill rate of the sample estimates
the module's, with its binomial error). Usage (from the repository root; see README):

    python .ci/mutation/sample.py SESSION.sqlite --keep 60 --seed 0
"""
import random
import sys

from cosmic_ray.tools.filters.filter_app import FilterApp
from cosmic_ray.work_item import WorkerOutcome, WorkResult


class Sample(FilterApp):
    def description(self):
        return "keep a seeded random sample of the pending mutants; skip the others"

    def add_args(self, parser):
        parser.add_argument("--keep", type=int, required=True)
        parser.add_argument("--seed", type=int, default=0)

    def filter(self, work_db, args):
        items = sorted(work_db.pending_work_items, key=lambda item: item.job_id)
        keep = set(random.Random(args.seed).sample(range(len(items)), min(args.keep,
                                                                           len(items))))
        for i, item in enumerate(items):
            if i not in keep:
                work_db.set_result(item.job_id, WorkResult(
                    output="not in the sample", worker_outcome=WorkerOutcome.SKIPPED))


if __name__ == "__main__":
    sys.exit(Sample().main())

"""A progress bar on stderr, advanced between compiled chunks (never from inside a scan)."""
import sys


def progress_bar(total, quiet=False, desc=None, unit="step"):
    """(update(done, total=None), close()); the tqdm bar is created at the first report, so a run
    rejected before it starts shows none. quiet=True gives (None, a no-op close)."""
    state = {"bar": None}
    if quiet:
        return None, lambda: None

    def update(done, new_total=None):
        if state["bar"] is None:
            from tqdm import tqdm

            state["bar"] = tqdm(total=new_total or total, desc=desc, unit=unit, file=sys.stderr,
                                leave=False, dynamic_ncols=True)
        state["bar"].update(done - state["bar"].n)

    def close():
        if state["bar"] is not None:
            state["bar"].close()

    return update, close

"""`toolchain build SPEC SPEC...`: several models in one command. Locally they build one after the other (as
before); on a Dask cluster they build at once, sharing one connection, so a stage two models share is one task."""

import threading


def build_all(specs, kwargs: dict, progress_for, session=None) -> list:
    """[(spec, report or None, exit code, ToolchainError or None)] in the order given. kwargs: api.build's."""
    from .api import build
    from .errors import ToolchainError

    results = [None] * len(specs)

    def one(i, spec):
        try:
            report, code = build(spec, progress=progress_for(spec), scheduler=session, **kwargs)
            results[i] = (spec, report, code, None)
        except ToolchainError as e:
            results[i] = (spec, None, e.exit_code, e)

    if session is None:
        for i, spec in enumerate(specs):
            one(i, spec)
        return results
    errors = []

    def guarded(i, spec):
        try:
            one(i, spec)
        except BaseException as e:  # a bug in one model's build: re-raised below, with its traceback
            errors.append(e)

    # daemon: on Ctrl-C the command exits; each unfinished model's report already says `stale` (api.build)
    threads = [threading.Thread(target=guarded, args=(i, s), name=f"build {s}", daemon=True)
               for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results

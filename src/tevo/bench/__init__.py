"""tevo.bench: the studies behind every number in the docs (``tevo bench ...``).

Each study is registered in ``BENCHMARKS`` (``tevo list benchmark``), iterates the registries
at run time and writes JSON + Markdown + PNG with its exact command and machine:
``speed`` / ``flops`` (complexity), ``quality`` (modifications), ``extrapolate``, ``recall``,
``reference``, ``decoder_only``, ``symmetry``; ``tevo bench all --quick`` runs them all small.

    from tevo.bench import run
    run("speed", mixers=["softmax", "local"], lengths=[256, 512], out="results")
"""


def run(command: str, **options):
    """Run one study command (see ``tevo bench COMMAND --help``); returns its reports."""
    from ._run import run as _run
    return _run(command, **options)


def run_all(**options):
    """Every study in turn (``tevo bench all``); returns a summary per command."""
    from ._run import run_all as _run_all
    return _run_all(**options)

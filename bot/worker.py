"""The worker's entry point: ``python -m bot.worker [--concurrency N] [--loglevel INFO] [-n NAME]``.

The same Celery worker as ``celery -A bot.tasks worker`` (which still works, for people): the
app of :mod:`bot.tasks` and its configuration (threads pool, tasks acknowledged late, prefetch
of one), started without Celery's command line. ``celery``'s click group imports every one of
its subcommands whichever one runs, among them the ``amqp`` shell with ``click_repl``,
``prompt_toolkit`` and ``pygments``: about 13 MiB in every worker process for code it never
runs (tests/bench/README.md, footprint). What the ``worker`` subcommand does beyond that is
done here the same way: the node name (``-n``, default ``celery@%h``, ``%h``/``%n``/``%d``
expanded) and ``app.Worker(...).start()``; the exit status is the worker's.
"""

from __future__ import annotations

import argparse
import sys

#: The options of ``celery worker`` that the operator and ``released run`` use.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot.worker",
        description="Run the bot's Celery worker (celery -A bot.tasks worker, without "
        "Celery's command line).",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=None,
                        help="tasks at once (threads of one process); default: Celery's")
    parser.add_argument("-P", "--pool", default=None,
                        help="the execution pool; default: the app's (threads)")
    parser.add_argument("-l", "--loglevel", default="INFO", type=str.upper, choices=LOG_LEVELS)
    parser.add_argument("-n", "--hostname", default=None,
                        help="node name (default celery@%%h; %%h, %%n and %%d are expanded)")
    parser.add_argument("--without-gossip", action="store_true")
    parser.add_argument("--without-mingle", action="store_true")
    parser.add_argument("--without-heartbeat", action="store_true")
    args = parser.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the worker and return its exit status when it stops."""
    args = parse_args(argv)
    from celery.utils.nodenames import default_nodename, host_format

    from bot.tasks import app

    options = {
        name: value
        for name, value in (
            ("concurrency", args.concurrency),
            ("without_gossip", args.without_gossip or None),
            ("without_mingle", args.without_mingle or None),
            ("without_heartbeat", args.without_heartbeat or None),
        )
        if value is not None
    }
    worker = app.Worker(
        hostname=host_format(default_nodename(args.hostname)),
        pool_cls=args.pool or app.conf.worker_pool,
        loglevel=args.loglevel,
        **options,
    )
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":  # pragma: no cover - the process entry point
    sys.exit(main())

"""Benchmarks of the broker against raw redis-py and Dramatiq, measured in one run.

Run ``python -m benchmarks`` (or ``python3 -m tox -e bench``) from the repository root:
it starts its own ``redis-server`` on a free loopback port, runs every scenario on
``memory://`` and on Redis together with the baselines, prints a table and writes the same
figures as JSON. See docs/performance.md for what each figure means.
"""

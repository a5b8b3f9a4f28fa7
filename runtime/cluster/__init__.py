"""A cluster of N identical simulated replicas behind a global router.

``replica.py`` holds one replica (its own scheduler, block manager, executor and clock), ``router.py`` the
routing policies, ``cluster_engine.py`` the event loop that advances simulated time across replicas, and
``run.py`` the experiment runner the CLI calls when ``cluster.num_replicas > 1``.
"""

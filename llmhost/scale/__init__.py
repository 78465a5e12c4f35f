"""Scaling out: llmhost as a Ray Serve application (``llmhost serve --ray``).

    replica.py     ReplicaEngine: one replica's models and calls, over picklable core types (no Ray)
    provider.py    ReplicaProvider: the replicas behind the Provider protocol, retries and resumes
    ray_serve.py   the Serve deployments (ModelReplica, Ingress), the application builder, serve_on_ray

Only ``provider.py`` and ``ray_serve.py`` import Ray (``pip install 'ray[serve]'``).
"""

__all__: list[str] = []

"""Adapters that let other tools drive a tsembed model. Each needs its tool installed (an optional extra):

* ``tsembed.integrations.mteb`` — an mteb encoder and its ``ModelMeta`` (``pip install 'tsembed[mteb]'``).

Nothing here is imported by ``import tsembed``.
"""

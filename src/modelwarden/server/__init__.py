"""``modelwarden serve``: a TensorFlow Serving-compatible REST server that runs every model in the sandbox.

Modules: :mod:`config` (TOML + ``model_config_list`` text format), :mod:`auth` (bearer tokens),
:mod:`limits` (request bounds, rate and concurrency limits), :mod:`codec` (TF Serving JSON),
:mod:`registry` (versions, labels, scan gate), :mod:`pool` (sandboxed workers),
:mod:`metrics`, :mod:`log`, :mod:`app` (the ASGI application).  Never imports TensorFlow.
"""

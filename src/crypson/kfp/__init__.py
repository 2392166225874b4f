"""Kubeflow Pipelines glue: what the components run inside their containers (runtime), and the
`crypson pipeline` commands that compile, run locally and submit the pipeline (cli).

The components live in components/ and the wiring in pipelines/ at the repository root; this
subpackage holds only the logic they call, so the stage implementations stay in crypson.stages.
kfp itself is imported lazily, by the commands that need it (it is the `kubeflow` extra).
"""

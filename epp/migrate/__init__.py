"""`epp migrate`: move manifests from the v1alpha2 (preview) inference API to v1.

`manifests` reads multi-document YAML from files, directories and stdin; `convert` turns v1alpha2
InferencePools and InferenceModels into v1 InferencePools, InferenceObjectives and InferenceModelRewrites and
writes the HTTPRoute steps of the zero-downtime path; `check` lists what still uses v1alpha2; `cli` is the
sub-command. See docs/migration.md.
"""

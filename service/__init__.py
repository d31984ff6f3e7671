"""The fine-tuning service: the OpenAI files and fine-tuning jobs API on the serving endpoint, each
job run on the Ray cluster as the same stages `rayft submit` runs (data prepare → train → eval →
gate), ending in a model the endpoint serves at once (docs/fine-tuning-api.md).

objects.py  the API's objects, shaped as OpenAI's
store.py    files, jobs and events in the registry's database
files.py    uploads: limits, formats, where the bytes live
jobs.py     the routes' operations: create (every field checked), read, list, cancel, per key
pipeline.py a job's stages: the config each runs with, what each leaves behind
runner.py   the Serve deployment that validates, queues, runs and watches the jobs
"""

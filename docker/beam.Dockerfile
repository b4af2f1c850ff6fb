# Beam worker image for the tirec feature pipeline (Dataflow / Flink / Spark portable runners,
# and Dask: scheduler, workers and the launching `tirec pipeline --runner dask`).
#
# Build from the repository root:
#   docker build -f docker/beam.Dockerfile -t tirec-beam:0.1.0 .
# Use it as the SDK harness, e.g. on Dataflow:
#   tirec pipeline --input gs://b/raw --format generic --out gs://b/tfr --runner DataflowRunner \
#     --project P --region R --temp_location gs://b/tmp \
#     --sdk_container_image=REGISTRY/tirec-beam:0.1.0 --sdk_location=container
# The SDK version of the base image must match the launcher's apache-beam (2.77).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/tirec
COPY setup.py README.md ./
COPY tirec ./tirec
COPY features ./features
COPY pipeline ./pipeline
COPY models ./models
COPY serving ./serving
COPY orchestration ./orchestration
# The dask extra: the same image runs `tirec pipeline --runner dask` and the Dask scheduler and
# workers (docker/k8s/beam-dask.yaml).
RUN pip install --no-cache-dir ".[dask]" && python -c "import tirec.pipeline.job, dask.distributed"

# The base image's entrypoint (/opt/apache/beam/boot) starts the SDK harness.

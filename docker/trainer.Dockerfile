# tirec CLI image for training, evaluation and export (CPU).
#
# Build from the repository root (the build context):
#   docker build -f docker/trainer.Dockerfile -t tirec-trainer:0.1.0 .
# Run any subcommand; the entrypoint is `tirec`:
#   docker run --rm -v "$PWD/work:/work" tirec-trainer:0.1.0 \
#       train --data /work/tfrecords --model daian --run /work/runs/daian
#   docker run --rm -v "$PWD/work:/work" -v "$PWD/serving_models:/models" tirec-trainer:0.1.0 \
#       export --run /work/runs/daian --out /models --model-name daian
FROM python:3.11-slim

ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/tirec
COPY setup.py README.md ./
COPY tirec ./tirec
COPY features ./features
COPY pipeline ./pipeline
COPY models ./models
COPY serving ./serving
COPY orchestration ./orchestration
RUN pip install --no-cache-dir . && tirec --help > /dev/null \
    && python -c "import tirec.models.registry as r, tirec.serving.export; r.model_names()"

WORKDIR /work
ENTRYPOINT ["tirec"]
CMD ["--help"]

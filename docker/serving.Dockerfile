# TF Serving image for exported tirec models, configured by the files of `tirec serving-config`.
#
# Build from the repository root (the build context):
#   docker build -f docker/serving.Dockerfile -t tirec-serving:0.1.0 .
# Bake exported models into the image (a folder inside the build context holding NAME/<version>/;
# demo_out/ and out/ are excluded by .dockerignore, so export elsewhere, e.g. docker/models):
#   tirec export --run RUN --out docker/models --model-name daian
#   docker build -f docker/serving.Dockerfile --build-arg MODEL_DIR=docker/models -t tirec-serving .
# Or mount the model base folder at run time (it hides what was baked in):
#   docker run -p 8500:8500 -p 8501:8501 -v "$PWD/serving_models:/models:ro" tirec-serving:0.1.0
# Other configs: mount a folder written by `tirec serving-config` over /config. Extra server flags
# go after the image name (e.g. --allow_version_labels_for_unavailable_models=true).
#
# The server must be at least as new as the TensorFlow that exported the models (2.21, matching
# tensorflow-serving-api 2.21). Pick an existing tag of https://hub.docker.com/r/tensorflow/serving/tags
# (`docker run --rm tensorflow/serving:TAG --version` prints its TensorFlow version); use
# TAG-gpu for GPUs.
ARG TF_SERVING_VERSION=2.21.0
FROM tensorflow/serving:${TF_SERVING_VERSION}

# Models baked in: BASE/NAME/<int version>/{saved_model.pb, variables/, assets.extra/}.
ARG MODEL_DIR=docker/models
COPY ${MODEL_DIR} /models/
# models.config names base paths under /models (the path compose mounts the models volume at).
COPY docker/serving_config/models.config docker/serving_config/batching.config \
     docker/serving_config/monitoring.config /config/

# 8500: gRPC (PredictionService, ModelService); 8501: REST and /monitoring/prometheus/metrics.
EXPOSE 8500 8501

# The flags of tf_serving_command("/config") in serving/tf_serving_config.py.
ENTRYPOINT ["/usr/bin/tensorflow_model_server", "--port=8500", "--rest_api_port=8501", \
            "--model_config_file=/config/models.config", \
            "--model_config_file_poll_wait_seconds=60", \
            "--enable_batching", "--batching_parameters_file=/config/batching.config", \
            "--monitoring_config_file=/config/monitoring.config"]
CMD []

# edge-emotion container images.
#
#   runtime (default target): the daemon on the LiteRT interpreter, OpenCV headless and the
#            shipped model; no TensorFlow, no compiler, runs as uid 10001 (group video).
#   convert: the training/conversion toolchain with TensorFlow (pip install .[convert]).
#
#   podman build --format docker -t edge-emotion .                  # docker build -t edge-emotion .
#   podman build --format docker --target convert -t edge-emotion-convert .
#
# --format docker keeps the HEALTHCHECK (the OCI image format has none). BASE must be a
# Debian/Ubuntu image whose python3 is 3.11 or newer; without a registry, build one from the
# Debian mirror with contrib/container/make-local-base.sh and pass
# --build-arg BASE=localhost/debian-bookworm:local. See contrib/container/README.md.
ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# python: the distribution's interpreter, shared by every stage (the venvs link to it).
FROM ${BASE} AS python
ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# ---------------------------------------------------------------------------------------------
# venv: an empty virtual environment and the project's pyproject, shared by builder and convert.
FROM python AS venv
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# Optional, for builds behind a TLS-inspecting proxy or with a package mirror (never stored in
# the runtime image): --build-arg PIP_CERT=/run/host-ca.crt
#   -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro (podman), --build-arg PIP_INDEX_URL=...
ARG PIP_CERT
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./

# ---------------------------------------------------------------------------------------------
# builder: the daemon's dependencies (binary wheels only, no compiler needed) and the project.
FROM venv AS builder
ARG PIP_CERT
ARG PIP_INDEX_URL
# Dependencies first, from pyproject.toml alone, so that editing the code keeps this layer.
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --only-binary :all: -r /tmp/requirements.txt
COPY edge/ edge/
COPY convert/ convert/
COPY models/emotion.tflite models/emotion.json models/
# After the dependencies, so a README edit keeps their layer; the licence goes into the wheel.
COPY README.md LICENSE ./
# The project itself, not editable and without extras; setuptools is fetched for the build only.
# The model goes to /opt/venv/share/edge-emotion/models (pyproject data-files), where
# edge.DEFAULT_MODEL finds it: neither the config file nor EDGE_MODEL__PATH has to name it.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m pip uninstall -y pip setuptools \
    && cd / && /opt/venv/bin/python -c "import edge, edge.__main__, edge.daemon; \
assert edge.DEFAULT_MODEL.is_file(), edge.DEFAULT_MODEL"
# Keep the image under 400 MB: LiteRT's GPU (WebGPU) accelerator, NPU vendor plugins and AOT
# tools are never used by the CPU interpreter; test suites and byte-code caches are not needed
# (the runtime user could not write the caches anyway; Python compiles in memory at start).
RUN cd /opt/venv/lib/python3*/site-packages \
    && rm -rf ai_edge_litert/libLiteRtWebGpuAccelerator.so ai_edge_litert/vendors \
        ai_edge_litert/tools \
    && find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
# convert: TensorFlow toolchain for training and conversion (large; built only when asked for).
#   podman run --rm -v /data/fer2013:/data:ro -v "$PWD/out:/work" edge-emotion-convert \
#       train --data /data --out /work/emotion.keras
#   (--user "$(id -u):$(id -g)" to write into a bind mount owned by you; ImageNet weights are
#   downloaded by Keras at the first training run, or pass --weights none.)
FROM venv AS convert
ARG PIP_CERT
ARG PIP_INDEX_URL
# Dependencies (the daemon's and the convert extra's) first, so that code edits keep this layer.
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['convert']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY edge/ edge/
COPY convert/ convert/
COPY models/emotion.tflite models/emotion.json models/
COPY README.md LICENSE ./
RUN pip install --no-deps ".[convert]" \
    && cd / && python -c "import convert.__main__, edge.__main__, tensorflow, tf_keras, tensorflow_model_optimization"
RUN groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid edge --home-dir /work --no-create-home \
        --shell /usr/sbin/nologin edge \
    && mkdir -p /work && chown edge:edge /work
WORKDIR /work
USER 10001
ENTRYPOINT ["edge-emotion-convert"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# runtime: the daemon (default target).
FROM python AS runtime
# uid/gid 10001 in group video (gid 44 on Debian): enough for --device /dev/video0 when the
# host's video group is gid 44 too, otherwise add --group-add <host video gid>. USER is the bare
# uid (no ":gid"): numeric for runAsNonRoot checks, and the runtime still adds group video.
RUN groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid edge --groups video --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin edge
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY contrib/container/healthcheck.py /opt/edge-emotion/healthcheck.py
# The spool (events still undelivered when the container stops during a broker outage) goes to
# /var/lib/edge-emotion: mount a volume there to keep it across re-creation. With --read-only and
# nothing mounted there the daemon runs without a spool and says so once.
RUN mkdir -p /etc/edge-emotion /var/lib/edge-emotion && chown 10001:10001 /var/lib/edge-emotion
ENV XDG_STATE_HOME=/var/lib
# Configuration: mount a file here (see systemd/edge.example.yaml); EDGE_* variables override it
# (EDGE_MQTT__HOST=broker.lan, EDGE_MQTT__PASSWORD=...). Logs go to the container's output.
# Metrics are on 127.0.0.1:9108 unless EDGE_METRICS__HOST=0.0.0.0 (then publish -p 9108:9108).
EXPOSE 9108
USER 10001
WORKDIR /opt/edge-emotion
# Healthy while every camera is up and frames are being analysed (see healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/edge-emotion/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-emotion"]
CMD ["run", "--config", "/etc/edge-emotion/edge.yaml"]

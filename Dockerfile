# tabserve serving image: ONNX models + the lean serving install, non-root, read-only-root friendly.
#   podman build --pull=never --format docker -t tabserve .        (docs/deployment.md, deploy/container-test.sh)
# Stages: runtime-root (the base image minus its installers, flattened) · deps (the locked serving venv, trimmed)
# · build (the project wheel) · final. Layers are ordered from least to most often changed, so a code-only
# change rebuilds just the build stage and the last layers of the final one (docs/operations.md).

# ---- runtime-root: the Python base without pip/setuptools/ensurepip, docs (licences stay) and glibc's iconv
# modules (Python has its own codecs). Nothing installs at run time. dpkg's database stays for image scanners.
FROM python:3.12-slim AS runtime-root
LABEL io.tabserve.build-stage=runtime-root
RUN rm -rf /usr/local/lib/python3*/site-packages/pip* /usr/local/lib/python3*/site-packages/setuptools* \
      /usr/local/lib/python3*/site-packages/wheel* /usr/local/lib/python3*/site-packages/_distutils_hack \
      /usr/local/lib/python3*/ensurepip /usr/local/bin/pip* \
      /usr/lib/python3/dist-packages/pip* /usr/lib/python3/dist-packages/setuptools* \
      /usr/lib/python3/dist-packages/pkg_resources /usr/lib/python3/dist-packages/wheel* \
      /usr/lib/python3/dist-packages/_distutils_hack /usr/lib/python3/dist-packages/distutils-precedence.pth \
      /usr/lib/python3.*/ensurepip /usr/lib/python3.*/lib2to3 /usr/lib/python3.*/pydoc_data \
      /usr/lib/python3.*/idlelib /usr/lib/python3.*/turtledemo /usr/share/python-wheels /usr/bin/pip* \
      /usr/local/lib/python3*/lib2to3 /usr/local/lib/python3*/idlelib /usr/local/lib/python3*/turtledemo \
      /usr/share/man/* /usr/share/info/* /var/cache/debconf/*-old /var/lib/apt/lists/* /usr/lib/*-linux-gnu/gconv \
 && find /usr/share/doc -type f ! -name copyright -delete

# ---- deps: the serving virtualenv from the locked, hashed requirements/serve.txt (wheels only)
FROM python:3.12-slim AS deps
LABEL io.tabserve.build-stage=deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# binutils (strip) lives in this stage only; DL3008: Debian's stable security updates are wanted, not pins
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY requirements/serve.txt /tmp/serve.txt
RUN /opt/venv/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/serve.txt
COPY deploy/slim-venv.sh /tmp/slim-venv.sh
# the project is installed beside the venv (/opt/app) so that code changes never touch this layer
RUN sh /tmp/slim-venv.sh /opt/venv \
 && echo /opt/app > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tabserve-app.pth"

# ---- build: the project wheel (locked build backend, no build isolation), installed --no-deps into /opt/app
FROM python:3.12-slim AS build
LABEL io.tabserve.build-stage=build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY deploy/build-requirements.txt /tmp/build-requirements.txt
RUN python -m venv /opt/buildenv \
 && /opt/buildenv/bin/pip install --require-hashes --no-deps -r /tmp/build-requirements.txt
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
RUN /opt/buildenv/bin/pip wheel --no-deps --no-build-isolation -w /dist /src \
 && /opt/buildenv/bin/pip install --no-deps --no-index --target /opt/app /dist/tabserve-*.whl \
 && sed -i '1s|.*|#!/opt/venv/bin/python|' /opt/app/bin/tabserve

# ---- final: flattened runtime root + venv + models + app; verified while building
FROM scratch
LABEL org.opencontainers.image.title=tabserve \
      org.opencontainers.image.description="tabserve inference service: ONNX tabular models with calibrated confidence" \
      org.opencontainers.image.licenses=MIT
# DL3067: copying the trimmed root is the point: deleting files in a layer above the base would not shrink
# the image (~31 MB of installers the server never runs). The stage is cached until the base image changes.
# hadolint ignore=DL3067
COPY --from=runtime-root / /
ENV PATH=/opt/app/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PORT=8080 \
    TABSERVE_MODELS_DIR=/app/models \
    TABSERVE_DATA_DIR=/tmp/tabserve
COPY --from=deps /opt/venv /opt/venv
COPY models/ /app/models/
COPY --from=build /opt/app /opt/app
WORKDIR /app
USER 10001:10001
# every model file's sha256 against its manifest, every serving module importable, every model runs once;
# then nothing the check wrote (onnxruntime's per-user device id under $HOME) stays in the image
RUN --mount=type=bind,source=deploy/image_check.py,target=/tmp/image_check.py \
    tabserve verify /app/models && python /tmp/image_check.py /app/models \
 && find /tmp -mindepth 1 -maxdepth 1 ! -name image_check.py -exec rm -rf {} +
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tabserve", "serve"]

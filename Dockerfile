# syntax=docker/dockerfile:1
# pytcpecho: the echo server as a drop-in container.
#   docker build -t pytcpecho:0.1.0 .
#   docker run --rm -p 8000:8000 pytcpecho:0.1.0                  # serve on :8000, IPv4 and IPv6
#   docker run --rm -p 8000:8000/tcp -p 8000:8000/udp pytcpecho:0.1.0 serve --udp  # UDP too
#   docker run --rm pytcpecho:0.1.0 client HOST:8000              # the verifying client
# Both stages use the same Python, so the wheel's compiled core fits the runtime.

# -- builder: the wheel, with the Cython core compiled (the full image has gcc) --
FROM python:3.11.14-bookworm AS builder
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY csrc/ csrc/
COPY pytcpecho/ pytcpecho/
# pip builds in an isolated environment with the build requirements of pyproject.toml.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && ls /wheels/pytcpecho-*-cp311-*.whl

# -- runtime: slim Python, only the wheel, a user without privileges --
FROM python:3.11.14-slim-bookworm AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pytcpecho" \
      org.opencontainers.image.description="TCP echo server and verifying client with a GIL-free Cython core" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.authors="pytcpecho developers" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTCPECHO_GRACE=8
# The wheel comes from the builder stage by a bind mount, so no layer keeps a copy;
# the import check fails the build if the Cython core is missing from it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "pytcpecho==${VERSION}" \
    && python -c "import pytcpecho; assert pytcpecho.cython_available(), 'no Cython core'" \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pytcpecho
USER 10001:10001
# Echo on 8000: TCP, and UDP for serve --udp and mesh (which serves both by default).
EXPOSE 8000/tcp 8000/udp
# SIGTERM: stop accepting, let connections finish for PYTCPECHO_GRACE seconds (8, inside
# docker stop's default 10 s), exit 0 with a summary line.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["pytcpecho", "ping", "--timeout", "3", "localhost:8000"]
ENTRYPOINT ["pytcpecho"]
CMD ["serve"]

# flashsale service image: `flashsale serve` on port 8080 as an unprivileged user.
# Configure it with FLASHSALE_* environment variables (see flashsale/settings.py and
# docker-compose.yml); FLASHSALE_TOKEN_SECRET and FLASHSALE_ADMIN_TOKEN (each >= 32 bytes) must
# be set for tokens to survive a restart.
# Every dependency comes from the lock files in requirements/ (exact versions, hashes checked;
# scripts/lock refreshes them); flashsale itself is installed without resolving anything.

# --- build: the flashsale wheel, made with the locked pip and setuptools ----------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements/build.txt requirements/
RUN pip install --require-hashes -r requirements/build.txt
COPY . .
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# --- run: the locked dependencies, then the wheel; no source tree, no build tools --------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# binary wheels only (this image has no compiler); a layer of its own, so a change to
# flashsale's code alone reuses it
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --require-hashes --only-binary :all: -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=build /wheels /wheels
# pip check: the locked versions satisfy the ranges flashsale's wheel declares
RUN pip install --no-deps --no-index /wheels/flashsale-*.whl \
    && pip check \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin flashsale
USER flashsale
WORKDIR /tmp
EXPOSE 8080
# slim has no curl: ask with Python. /healthz is 200 only when Redis and PostgreSQL both answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8080/healthz', timeout=4)"]
# exec form: flashsale is PID 1 and gets SIGTERM itself (aiohttp shuts down gracefully on it)
CMD ["flashsale", "serve", "--host", "0.0.0.0", "--port", "8080"]

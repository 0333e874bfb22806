# flashsale service image: `flashsale serve` on port 8080 as an unprivileged user.
# Configure it with FLASHSALE_* environment variables (see flashsale/settings.py and
# docker-compose.yml); FLASHSALE_TOKEN_SECRET (>= 32 bytes) and FLASHSALE_ADMIN_TOKEN must be set
# for tokens to survive a restart.

# --- build: turn the source tree (and every dependency) into wheels ---------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

# --- run: install the wheels only, no source tree, no build tools -----------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels flashsale \
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

# tegami: a small, non-root image that runs `tegami serve`.
# Migrations are a separate step:  docker run --rm -e TEGAMI_DATABASE_URL=... IMAGE tegami migrate
FROM python:3.11-slim AS build
WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
RUN python -m venv /opt/tegami \
 && /opt/tegami/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/tegami/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv/tegami tegami
COPY --from=build /opt/tegami /opt/tegami
WORKDIR /srv/tegami
COPY alembic.ini ./
COPY migrations ./migrations
ENV PATH="/opt/tegami/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER tegami
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["tegami", "serve", "--host", "0.0.0.0", "--port", "8000"]

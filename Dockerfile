# Catalens image: the same `catalens` commands the tests run, in a container.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 CATALENS_INDEX_DIR=/data/index
WORKDIR /app
# CPU-only torch keeps the image small; drop the index URL to get the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3" "torchvision>=0.18"
COPY pyproject.toml README.md ./
COPY catalens ./catalens
COPY indexer ./indexer
COPY retrieval ./retrieval
COPY sampledata ./sampledata
COPY training ./training
COPY bench ./bench
COPY cli ./cli
COPY migrations ./migrations
RUN pip install ".[postgres,milvus,ray]"

EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
ENTRYPOINT ["catalens"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# The project image for Kubernetes (and Docker) work pools: this checkout, installed, with the
# CUDA build of torch that PyPI ships for Linux. Build and push it where your cluster pulls from:
#   docker build -t registry.example.com/distillery:$(git rev-parse --short HEAD) .
# Flow runs start in /opt/distillery (deploy/kubernetes/prefect.yaml's pull step); `runs` there is
# the shared run root the job mounts at /runs, so a relative run_root (runs/tiny) lands on it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
# git: lineage records the commit when the build context holds .git (see .dockerignore).
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/distillery
# Dependencies first, from the pins alone, so that a code change rebuilds only the last layers; the
# `ray` extra too, so that the same image serves as a Ray node (execution.runner: ray).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['ray']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt prefect-kubernetes==0.8.0
COPY flows flows
COPY distill distill
COPY experts experts
COPY generation generation
COPY domains domains
COPY kernels kernels
COPY data data
COPY configs configs
COPY prefect.yaml ./
RUN pip install --no-deps -e . && ln -s /runs /opt/distillery/runs

CMD ["prefect", "worker", "start", "--pool", "distillery-k8s", "--type", "kubernetes"]

# One image for web and workers. The gpu-worker service adds requirements-ml.txt (torch, transformers, peft).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt requirements-ml.txt ./
ARG WITH_ML=0
RUN pip install --no-cache-dir -r requirements.txt && \
    if [ "$WITH_ML" = "1" ]; then pip install --no-cache-dir -r requirements-ml.txt; fi
COPY . .
RUN DEBUG=0 SECRET_KEY=build-only-placeholder-build-only-placeholder-build-only ALLOWED_HOSTS=build \
    python manage.py collectstatic --noinput

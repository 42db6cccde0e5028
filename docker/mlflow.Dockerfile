# The MLflow tracking server of docker/compose.yaml: PostgreSQL backend store (psycopg2), artifacts in an
# S3-compatible store (boto3), basic auth (Flask-WTF). Same versions as constraints.txt. The image also runs
# the stack's check-env service (docker/check-env.py).
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.8 Flask-WTF==1.3.0 \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlflow-auth && chown mlflow /mlflow-auth
COPY mlflow-auth.ini /etc/mlflow/basic_auth.ini
COPY check-env.py /usr/local/bin/check-env.py
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000

# ftune on a CUDA PyTorch image: docker build -t ftune . && docker run --gpus all -v hf-cache:/cache ftune --help
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    PYTHONUNBUFFERED=1

WORKDIR /opt/ftune
COPY pyproject.toml README.md ./
COPY ftune ./ftune
COPY recipes ./recipes
# The image's CUDA torch satisfies the torch range, so pip keeps it; the extras add 4-bit QLoRA, ftune serve and board,
# ftune export (GGUF, ONNX) and ftune dpo (TRL).
# Serving: docker run -p 8000:8000 ... ftune serve RUN --host 0.0.0.0 --api-key KEY
RUN pip install ".[qlora,gguf,serve,onnx,dpo]"

# Run as an unprivileged user; models, datasets and the Hub cache live on a volume that outlives containers.
RUN useradd --create-home --uid 1000 ftune && mkdir -p /cache /work && chown ftune:ftune /cache /work
USER ftune
VOLUME ["/cache"]
WORKDIR /work

EXPOSE 8000
ENTRYPOINT ["ftune"]
CMD ["--help"]

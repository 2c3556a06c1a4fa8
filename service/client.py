"""Command-line client over HTTP (default) or gRPC.

    python -m service.client translate "Friday, March 14, 2025" ["She speaks German." …] [--beam-size 4]
    python -m service.client translate "Friday, March 14, 2025" --stream   # tokens as they are decoded
    python -m service.client classify digit.png [more.png …] [--top-k 3]
    python -m service.client caption scene.png [--attention attention.png]
    … --grpc                      # gRPC on 127.0.0.1:9000 instead of HTTP on 127.0.0.1:8000
    … --url http://host:8000 / --grpc-target host:9000 / --timeout-ms 2000

Exit status: 0 on success, 1 when the service answered with an error (printed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path


class ServiceError(RuntimeError):
    pass


def _http(args, route: str, payload: dict) -> dict:
    import requests

    headers = {"X-Request-Timeout-Ms": str(args.timeout_ms)} if args.timeout_ms else {}
    try:
        r = requests.post(args.url.rstrip("/") + route, json=payload, headers=headers, timeout=(args.timeout_ms or 60_000) / 1000 + 5)
    except requests.RequestException as e:
        raise ServiceError(f"cannot reach {args.url}: {e.__class__.__name__}") from None
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            raise ServiceError(f"HTTP {r.status_code} {err['code']}: {err['message']}")
        except (ValueError, KeyError):
            raise ServiceError(f"HTTP {r.status_code}: {r.text[:200]}") from None
    return r.json()


def _grpc(args, method: str, request):
    import grpc

    from proto import inference_pb2_grpc

    timeout = (args.timeout_ms or 60_000) / 1000
    with grpc.insecure_channel(args.grpc_target) as channel:
        try:
            return getattr(inference_pb2_grpc.InferenceStub(channel), method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise ServiceError(f"gRPC {e.code().name}: {e.details()}") from None


def _attention_dict(a) -> dict:
    """A gRPC AttentionMap as the JSON API writes it."""
    weights = [list(a.weights[i * a.cols : (i + 1) * a.cols]) for i in range(a.rows)]
    out = {"target_tokens": list(a.row_tokens), "weights": weights}
    if a.col_tokens:
        out["source_tokens"] = list(a.col_tokens)
    if a.grid_rows:
        out["grid"] = [a.grid_rows, a.grid_cols]
    return out


def _numbered(path: str, i: int, n: int) -> str:
    """``out.png`` for one input; ``out-1.png``, ``out-2.png``, … for several."""
    if n == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{i + 1}{p.suffix}"))


def _named(args, payload: dict) -> dict:
    """The request body, with the model it names (``--model``) if any."""
    return payload | ({"model": args.model} if args.model else {})


def stream(args) -> list[str]:
    """Print the translation token by token as the service decodes it; return it whole."""
    if len(args.inputs) != 1:
        raise ServiceError("--stream translates one text at a time")
    pieces = []
    if args.grpc:
        import grpc

        from proto import inference_pb2 as pb
        from proto import inference_pb2_grpc

        with grpc.insecure_channel(args.grpc_target) as channel:
            try:
                for chunk in inference_pb2_grpc.InferenceStub(channel).TranslateStream(
                        pb.TranslateRequest(texts=args.inputs, model=args.model), timeout=(args.timeout_ms or 60_000) / 1000):
                    if not chunk.done:
                        pieces.append(chunk.token)
                        print(chunk.token, end="", flush=True, file=sys.stderr)
            except grpc.RpcError as e:
                raise ServiceError(f"gRPC {e.code().name}: {e.details()}") from None
    else:
        import requests

        headers = {"X-Request-Timeout-Ms": str(args.timeout_ms)} if args.timeout_ms else {}
        try:
            with requests.post(args.url.rstrip("/") + "/v1/translate/stream", json=_named(args, {"text": args.inputs[0]}), headers=headers,
                               stream=True, timeout=(args.timeout_ms or 60_000) / 1000 + 5) as r:
                if r.status_code != 200:
                    raise ServiceError(f"HTTP {r.status_code}: {r.text[:200]}")
                event = "message"
                for line in r.iter_lines(decode_unicode=True):
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        item = json.loads(line[6:])
                        if event == "error":
                            raise ServiceError(f"{item['error']['code']}: {item['error']['message']}")
                        if "token" in item:
                            pieces.append(item["token"])
                            print(item["token"], end="", flush=True, file=sys.stderr)
        except requests.RequestException as e:
            raise ServiceError(f"cannot reach {args.url}: {e.__class__.__name__}") from None
    print(file=sys.stderr)
    return ["".join(pieces)]


def translate(args) -> list[str]:
    if args.stream:
        return stream(args)
    want = bool(args.attention)
    if args.grpc:
        from proto import inference_pb2 as pb

        reply = _grpc(args, "Translate", pb.TranslateRequest(texts=args.inputs, beam_size=args.beam_size, return_attention=want,
                                                            model=args.model))
        translations, maps = list(reply.translations), [_attention_dict(a) for a in reply.attention]
    else:
        body = _http(args, "/v1/translate", _named(args, {"texts": args.inputs, "beam_size": args.beam_size, "return_attention": want}))
        translations, maps = body["translations"], body.get("attention", [])
    if want:
        from service.plots import translation_attention

        for i, m in enumerate(maps):
            print(f"attention: {translation_attention(m, _numbered(args.attention, i, len(maps)))}", file=sys.stderr)
    return translations


def _read(paths: list[str]) -> list[bytes]:
    data = []
    for p in paths:
        try:
            data.append(Path(p).read_bytes())
        except OSError as e:
            raise ServiceError(f"cannot read {p}: {e.strerror}") from None
    return data


def classify(args) -> list[list[dict]]:
    images = _read(args.inputs)
    if args.grpc:
        from proto import inference_pb2 as pb

        reply = _grpc(args, "Classify", pb.ClassifyRequest(images=images, top_k=args.top_k, model=args.model))
        return [[{"label": p.label, "score": round(p.score, 4)} for p in row.predictions] for row in reply.predictions]
    payload = _named(args, {"images": [base64.b64encode(b).decode() for b in images], "top_k": args.top_k})
    return _http(args, "/v1/classify", payload)["predictions"]


def caption(args) -> list[str]:
    out, want = [], bool(args.attention)
    images = _read(args.inputs)
    for i, image in enumerate(images):
        if args.grpc:
            from proto import inference_pb2 as pb

            reply = _grpc(args, "Caption", pb.CaptionRequest(image=image, beam_size=args.beam_size, return_attention=want,
                                                             model=args.model))
            captions, maps = list(reply.captions), [_attention_dict(a) for a in reply.attention]
        else:
            body = _http(args, "/v1/caption", _named(args, {"image": base64.b64encode(image).decode(),
                                                            "beam_size": args.beam_size, "return_attention": want}))
            captions, maps = body["captions"], body.get("attention", [])
        out += captions
        if want and maps:
            from service.plots import caption_attention

            path = caption_attention(image, maps[0], _numbered(args.attention, i, len(images)))
            print(f"attention: {path}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description="Send translation, classification and captioning requests.")
    parser.add_argument("task", choices=("translate", "classify", "caption"))
    parser.add_argument("inputs", nargs="+", help="texts to translate, or image files")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="HTTP base URL")
    parser.add_argument("--grpc-target", default="127.0.0.1:9000", help="gRPC host:port")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--model", help="a model of the repository by name (default: the shipped one of the task)")
    parser.add_argument("--timeout-ms", type=int, help="deadline for the request")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--stream", action="store_true", help="translate: show tokens as they are decoded (on stderr)")
    parser.add_argument("--attention", metavar="PNG", help="translate/caption: also draw the cross-attention into this PNG "
                        "(numbered out-1.png, out-2.png, … for several inputs)")
    args = parser.parse_args(argv)
    if args.attention and args.task == "classify":
        parser.error("--attention applies to translate and caption")
    if args.stream and (args.task != "translate" or args.attention or args.beam_size != 1):
        parser.error("--stream applies to translate, greedy, without --attention")
    try:
        result = {"translate": translate, "classify": classify, "caption": caption}[args.task](args)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif args.task == "classify":
        for path, preds in zip(args.inputs, result):
            print(f"{path}: " + ", ".join(f"{p['label']} ({p['score']:.3f})" for p in preds))
    else:
        for line in result:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

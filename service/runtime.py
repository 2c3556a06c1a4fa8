"""ONNX Runtime sessions: threads, providers (chosen by ``service.providers``), and KV-cached decoding steps.

A decoding step runs through IOBinding (``EncoderDecoderRuntime.run_step``): the ``present.*`` outputs stay where
the step ran (device memory under CUDA) and are bound as the next step's ``past_key_values.*``; the graph returns
each row's best next tokens (``top_ids`` / ``top_logp``, ``export/step_io.py``), so only those come back to the
host each step. Between steps, changed rows and dropped columns are edited where the cache lives
(``service.cache_edit``). Cross-attention K/V are uploaded when the batch's rows change, not per step. The same code
runs on CPU (device ``cpu``, where binding a numpy array copies nothing), which is how it is tested on machines
without a GPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.cache_edit import CacheEditor, host_view
from service.decoding import DecodingOptions, decode
from service.providers import DECODER_SHARE, CPU, CUDA, bench_providers, cuda_options, preload_cuda, provider_problem, select_providers  # noqa: F401

log = logging.getLogger(__name__)



def kv_names(prefix: str, layers: int) -> list[str]:
    """``prefix.0.key … prefix.{L-1}.key, prefix.0.value …``: the order K/V lists use everywhere."""
    return [f"{prefix}.{i}.key" for i in range(layers)] + [f"{prefix}.{i}.value" for i in range(layers)]


def decoder_feed(tokens, positions, self_mask, cross_mask, past: Sequence, cross: Sequence, top_k: int = 1) -> dict:
    """The decoder's inputs for one step, by name: the one place a feed is built (the engine's step, its
    calibration, the offline search and the attention maps all call it). ``tokens``/``positions`` ``(B, 1)``,
    ``self_mask`` ``(B, P + 1)``, ``cross_mask`` ``(B, S)``; ``past``/``cross``: 2L arrays or OrtValues, keys of
    every layer then values (``kv_names``); ``top_k``: next-token candidates returned per row."""
    layers = len(past) // 2
    feed = {"input_ids": tokens, "position_ids": positions, "self_mask": self_mask, "cross_mask": cross_mask,
            "top_k": np.array([top_k], dtype=np.int64)}
    feed.update(zip(kv_names("past_key_values", layers), past))
    feed.update(zip(kv_names("cross", layers), cross))
    return feed


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...] | None = None  # None: select_providers()
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 1
    cuda_device_id: int = 0
    gpu_mem_limit: int | None = None  # bytes of GPU memory this model's sessions may hold (None: no limit)


def share(options: RuntimeOptions, fraction: float) -> RuntimeOptions:
    """``options`` with ``fraction`` of its GPU memory limit (one session of a model's several)."""
    if options.gpu_mem_limit is None:
        return options
    return dataclasses.replace(options, gpu_mem_limit=int(options.gpu_mem_limit * fraction))


def create_session(path: str | Path | bytes, options: RuntimeOptions = RuntimeOptions()) -> ort.InferenceSession:
    """A session on the selected providers; ``path`` may also be a serialized model."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    providers = list(options.providers) if options.providers else select_providers()
    if CUDA in providers:
        preload_cuda()
    provider_options = [cuda_options(options.cuda_device_id, options.gpu_mem_limit) if p == CUDA else {} for p in providers]
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=so, providers=providers, provider_options=provider_options)


def device_of(session: ort.InferenceSession) -> str:
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def with_cross_attention_weights(model, layer: int):
    """``decoder.onnx`` with one more output, ``cross_attention``: the softmax weights ``(B, H, 1, S)`` of layer
    ``layer``'s cross-attention, taken from its fused ``Attention`` node (``qk_matmul_output_mode=3``), so the
    graph stays fused. The node is found by its K input, which comes from graph input ``cross.{layer}.key``
    (possibly through ``Cast`` nodes, as in fp16 graphs)."""
    import onnx
    from onnx import helper

    model = copy.deepcopy(model)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}

    def source(name: str) -> str:
        while name in producer and producer[name].op_type in ("Cast", "Identity"):
            name = producer[name].input[0]
        return name

    want = f"cross.{layer}.key"
    nodes = [n for n in graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx") and source(n.input[1]) == want]
    if len(nodes) != 1:
        raise ValueError(f"expected one fused Attention node reading {want}, found {len(nodes)}")
    node = nodes[0]
    outputs = list(node.output) + [""] * (4 - len(node.output))
    outputs[3] = "cross_attention"
    del node.output[:]
    node.output.extend(outputs)
    for attr in node.attribute:
        if attr.name == "qk_matmul_output_mode":
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute("qk_matmul_output_mode", 3))  # weights after softmax
    logits = next(o for o in graph.output if o.name == "logits")
    graph.output.append(helper.make_tensor_value_info("cross_attention", logits.type.tensor_type.elem_type,
                                                      ["batch", "heads", 1, "source"]))
    onnx.checker.check_model(model)
    return model


class EncoderDecoderRuntime:
    """The two sessions of a generative model in the repository (``encoder.onnx`` + ``decoder.onnx``)."""

    def __init__(self, directory: str | Path, options: RuntimeOptions = RuntimeOptions()) -> None:
        self.directory = Path(directory)
        self.config = json.loads((self.directory / "config.json").read_text())
        self.encoder = create_session(self.directory / "encoder.onnx", share(options, 1 - DECODER_SHARE))
        self.decoder = create_session(self.directory / "decoder.onnx", share(options, DECODER_SHARE))
        self.layers = self.config["decoder"]["layers"]
        past_type = next(i.type for i in self.decoder.get_inputs() if i.name.startswith("past_key_values"))
        self.float_type = np.float16 if past_type == "tensor(float16)" else np.float32
        inputs = {i.name for i in self.decoder.get_inputs()}
        if "top_k" not in inputs:
            raise RuntimeError(f"{self.directory / 'decoder.onnx'} has no top_k input: it was exported before the "
                               "decoder's step interface (in-graph top-k); export the repository again (make export)")
        self.present_names = kv_names("present", self.layers)
        self.options = options
        self._local = threading.local()
        self.io_binding = self.device != "cpu"  # see run_step
        self._attention: ort.InferenceSession | None = None  # made on first use (return_attention)
        self._attention_lock = threading.Lock()
        self.edit_cache = CacheEditor(2 * self.layers, self.float_type, self.decoder.get_providers(), self.device,
                                      options.cuda_device_id)

    @property
    def provider(self) -> str:
        """The execution provider the decoder runs on."""
        return self.decoder.get_providers()[0]

    def provider_problem(self) -> str | None:
        return provider_problem(self.encoder) or provider_problem(self.decoder)

    @property
    def device(self) -> str:
        return device_of(self.decoder)

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        """``array`` where the decoder runs (on CPU the OrtValue shares the numpy array's memory: no copy)."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.options.cuda_device_id)

    def run_step(self, feed: Mapping, logits: bool = False) -> tuple:
        """One decoder step: ``feed`` from ``decoder_feed`` → ``(top_ids (B, k) int64, top_logp (B, k) float32,
        present: 2L cache tensors where the step ran[, logits (B, V) float32])``.

        On a device (``io_binding``): through IOBinding, numpy inputs bound as host inputs and OrtValues where they
        are; the ``present.*`` stay on the device and only the top-k (and the logits, when asked) are copied to the
        host. On the CPU the host is the device: a plain ``run`` hands back numpy arrays over ORT's own output
        buffers (no copy) and costs ~60 µs less a step than binding 20-odd names (a one-row translator step: 344 vs
        403 µs). ``io_binding = True`` runs the device path on the CPU too (the tests do)."""
        if not self.io_binding:
            names = ["top_ids", "top_logp"] + (["logits"] if logits else []) + self.present_names
            out = self.decoder.run(names, {k: host_view(v) for k, v in feed.items()})
            top_ids, top_logp = out[0], out[1].astype(np.float32, copy=False)
            if logits:
                return top_ids, top_logp, out[3:], out[2].astype(np.float32, copy=False)
            return top_ids, top_logp, out[2:]
        binding = getattr(self._local, "binding", None)
        if binding is None:  # one per thread, reused: inputs are rebound each step, outputs cleared after it
            binding = self._local.binding = self.decoder.io_binding()
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        names = ["top_ids", "top_logp"] + (["logits"] if logits else [])
        for name in names:
            binding.bind_output(name, "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device, self.options.cuda_device_id)
        self.decoder.run_with_iobinding(binding)
        out = binding.get_outputs()
        binding.clear_binding_outputs()
        top_ids, top_logp = out[0].numpy(), out[1].numpy().astype(np.float32, copy=False)
        present = out[len(names):]
        if logits:
            return top_ids, top_logp, present, out[2].numpy().astype(np.float32, copy=False)
        return top_ids, top_logp, present

    def blank_images(self, batch: int) -> np.ndarray:
        """``batch`` black images as an image encoder takes them: ``(B, C, S, S)``, C = 1 for the shipped captioner,
        an imported one's own channels."""
        size, channels = self.config["encoder"]["image_size"], self.config.get("processing", {}).get("channels", 1)
        return np.zeros((batch, channels, size, size), np.float32)

    def encode(self, inputs: np.ndarray, source_mask: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """Encoder input (token ids ``(B, S)`` or images ``(B, 1, H, W)``) → cross K/V per layer (k₀…, v₀…) and mask ``(B, S)``."""
        name = self.encoder.get_inputs()[0].name
        outputs = self.encoder.run(None, {name: inputs})
        cross = dict(zip((o.name for o in self.encoder.get_outputs()), outputs))
        kv = [cross[name] for name in kv_names("cross", self.layers)]
        if source_mask is None:
            source_mask = np.ones((kv[0].shape[0], kv[0].shape[2]), dtype=bool)
        return kv, source_mask

    def attention_session(self) -> ort.InferenceSession:
        with self._attention_lock:
            if self._attention is None:
                import onnx

                model = with_cross_attention_weights(onnx.load(self.directory / "decoder.onnx"), self.layers - 1)
                self._attention = create_session(model.SerializeToString(), self.options)
        return self._attention

    def cross_attention(self, inputs: np.ndarray, source_mask: np.ndarray | None, outputs: list[list[int]]) -> list[np.ndarray]:
        """What the decoder looked at while producing each output token: one ``(len(output), source positions)``
        array per row, the last layer's cross-attention averaged over heads; padding columns dropped.

        One teacher-forced pass with the KV cache over ``[BOS] + output`` on a copy of the decoder that also
        returns its fused cross-attention node's weights (``with_cross_attention_weights``). Rows are decoded
        together; a row that is done keeps stepping on padding, and its extra rows are cut off.
        """
        session = self.attention_session()
        cross_kv, mask = self.encode(inputs, source_mask)
        special = self.config["special_tokens"]
        b, steps = len(outputs), max((len(o) for o in outputs), default=0)
        feed_tokens = np.full((b, max(steps, 1)), special["pad"], dtype=np.int64)
        for i, out in enumerate(outputs):
            row = [special["bos"]] + list(out)
            feed_tokens[i, : min(len(row), steps)] = row[:steps]
        cfg = self.config["decoder"]
        past = [np.zeros((b, cfg["heads"], 0, cfg["head_dim"]), dtype=self.float_type) for _ in range(2 * self.layers)]
        names = ["cross_attention"] + kv_names("present", self.layers)
        weights = np.zeros((b, steps, mask.shape[1]), dtype=np.float32)
        for t in range(steps):
            feeds = decoder_feed(feed_tokens[:, t : t + 1], np.full((b, 1), t, dtype=np.int64),
                                 np.ones((b, t + 1), dtype=bool), mask, past, cross_kv)
            attention, *past = session.run(names, feeds)
            weights[:, t] = attention[:, :, 0].astype(np.float32).mean(axis=1)  # (B, S): heads averaged
        return [weights[i, : len(out), : int(mask[i].sum())] for i, out in enumerate(outputs)]

    def start(self, cross_kv: list[np.ndarray], cross_mask: np.ndarray, repeat: int = 1) -> OrtInference:
        """A decoding state for this batch; ``repeat`` > 1 repeats every row (one per beam)."""
        if repeat > 1:
            cross_kv = [np.repeat(a, repeat, axis=0) for a in cross_kv]
            cross_mask = np.repeat(cross_mask, repeat, axis=0)
        return OrtInference(self, cross_kv, cross_mask)

    def generate(self, inputs: np.ndarray, source_mask: np.ndarray | None, options: DecodingOptions,
                 interrupted: Callable[[], bool] | None = None) -> list[list[int]]:
        """Encode once, then greedy or beam search with the KV cache: token ids per row, EOS excluded.

        ``interrupted`` is asked before every decoder step; once it answers True the search stops with ``Interrupted``
        (deadline passed, client gone) and its KV cache is released.
        """
        cross_kv, mask = self.encode(inputs, source_mask)
        special = self.config["special_tokens"]
        if interrupted is None:
            factory = lambda repeat: self.start(cross_kv, mask, repeat)
        else:
            factory = lambda repeat: _Interruptible(self.start(cross_kv, mask, repeat), interrupted)
        return decode(factory, mask.shape[0], special["bos"], special["eos"], options)


class Interrupted(RuntimeError):
    """A search stopped before it finished because its ``interrupted`` check said so."""


class _Interruptible:
    """An ``Inference`` that checks ``interrupted`` before each step and frees its cache when it stops."""

    def __init__(self, inner: OrtInference, interrupted: Callable[[], bool]) -> None:
        self.inner, self.interrupted = inner, interrupted

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        if self.interrupted():
            self.inner.release()
            raise Interrupted("decoding interrupted")
        return self.inner.logits(tokens)

    def candidates(self, tokens: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        if self.interrupted():
            self.inner.release()
            raise Interrupted("decoding interrupted")
        return self.inner.candidates(tokens, c)

    def rearrange_kv_cache(self, source_rows: np.ndarray) -> None:
        self.inner.rearrange_kv_cache(source_rows)

    def release(self) -> None:
        self.inner.release()


class OrtInference:
    """One batch being decoded on ONNX Runtime: the ``Inference`` interface of ``service.decoding``, through the same
    ``run_step`` and cache edits as the engine (the cache stays on the device)."""

    def __init__(self, runtime: EncoderDecoderRuntime, cross_kv: list[np.ndarray], cross_mask: np.ndarray) -> None:
        self.rt, self.layers = runtime, runtime.layers
        cfg = runtime.config["decoder"]
        self.step = 0
        self._set_source(cross_kv, cross_mask)
        self.rows: np.ndarray | None = None  # the cache row each row continues from, next step (None: its own)
        empty = np.zeros((self.batch, cfg["heads"], 0, cfg["head_dim"]), dtype=runtime.float_type)
        self.past: list = [runtime.to_device(empty) for _ in range(2 * self.layers)]
        self.top: tuple[np.ndarray, np.ndarray] | None = None  # the last step's (top_ids, top_logp)

    def _set_source(self, cross_kv: list[np.ndarray], cross_mask: np.ndarray) -> None:
        self.cross_host = [np.ascontiguousarray(a) for a in cross_kv]
        self.cross_mask = np.ascontiguousarray(cross_mask.astype(bool))
        self.cross = [self.rt.to_device(a) for a in self.cross_host]  # uploaded once per set of rows
        self.batch = len(self.cross_mask)

    def logits(self, tokens: np.ndarray, top_k: int = 1) -> np.ndarray:
        """Feed the last token of each row ``(B,)``; return next-token logits ``(B, V)`` as float32 (each row's
        ``top_k`` best candidates are kept in ``self.top``)."""
        past = self.rt.edit_cache(self.past, self.rows, 0)
        feed = decoder_feed(tokens.reshape(-1, 1).astype(np.int64), np.full((self.batch, 1), self.step, dtype=np.int64),
                            np.ones((self.batch, self.step + 1), dtype=bool), self.cross_mask, past, self.cross, top_k=top_k)
        top_ids, top_logp, self.past, logits = self.rt.run_step(feed, logits=True)
        self.top = (top_ids, top_logp)
        self.rows = None
        self.step += 1
        return logits

    def candidates(self, tokens: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Feed the last token of each row; each row's ``c`` best next tokens and their log-probabilities, best
        first, chosen in the graph (what the engine's beam rows get)."""
        self.logits(tokens, top_k=c)
        return self.top

    def rearrange_kv_cache(self, source_rows: np.ndarray) -> None:
        """Row ``i`` continues from row ``source_rows[i]`` (beam search); the batch size may change. The self-attention
        cache is edited where it lives before the next step; cross-attention K/V are gathered on the host and uploaded
        again."""
        source_rows = np.asarray(source_rows, dtype=np.int64)
        self.rows = source_rows if self.rows is None else self.rows[source_rows]
        self._set_source([a[source_rows] for a in self.cross_host], self.cross_mask[source_rows])

    def release(self) -> None:
        self.past, self.cross, self.cross_host = [], [], []


def load_config(directory: str | Path) -> Mapping:
    return json.loads((Path(directory) / "config.json").read_text())

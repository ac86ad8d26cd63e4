"""A byte-level tokenizer for the random-weight models (no files to load): UTF-8 bytes as ids, three specials."""
import torch
from transformers import BatchEncoding


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then <bos> <eos> <pad>: enough tokenizer for random-weight models."""
    bos_token_id, eos_token_id, pad_token_id, vocab_size = 256, 257, 258, 259
    padding_side = "left"  # decoder-only batches pad on the left so every row ends at its last token
    name_or_path = "bytes"
    chat_template = None

    def __len__(self):
        return self.vocab_size

    def encode(self, text, add_special_tokens=False):
        return ([self.bos_token_id] if add_special_tokens else []) + list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))  # a special breaks a multi-byte character
            run = bytearray()
            if not skip_special_tokens:
                out.append(self.convert_ids_to_tokens(i))
        return "".join(out) + run.decode("utf-8", errors="replace")

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r, skip_special_tokens) for r in rows]

    def convert_ids_to_tokens(self, ids):
        name = lambda i: f"<0x{i:02X}>" if i < 256 else {256: "<bos>", 257: "<eos>", 258: "<pad>"}.get(i, f"<{i}>")
        return name(ids) if isinstance(ids, int) else [name(i) for i in ids]

    def get_vocab(self):
        return {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}

    def __call__(self, text, return_tensors="pt", padding=True, add_special_tokens=False):
        rows = [self.encode(t, add_special_tokens) for t in ([text] if isinstance(text, str) else text)]
        width = max(map(len, rows))
        pad = lambda r, v: [v] * (width - len(r)) if padding else []
        left = self.padding_side == "left"
        ids = [pad(r, self.pad_token_id) + r if left else r + pad(r, self.pad_token_id) for r in rows]
        mask = [pad(r, 0) + [1] * len(r) if left else [1] * len(r) + pad(r, 0) for r in rows]
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type=return_tensors)

"""Pull GGUF models from the Hugging Face Hub (``hf:ORG/REPO[:FILE.gguf|:QUANT]``) or a plain URL.

A pull (:func:`pull_model`, in :mod:`.flow`) goes through these steps, reported to ``progress`` as
:class:`PullProgress` events (:mod:`.progress`) that mirror Ollama's ``/api/pull`` JSON lines:

1. ``resolving``: parse the spec (:mod:`.spec`); for the hub, ``HfApi.model_info(files_metadata=True)``
   lists the repo's files with their LFS sha256 and size, and the file is picked (by name, by
   quantization, or Q4_K_M / the only GGUF by default) (:mod:`.hub`). The endpoint is ``endpoint``, else
   ``$HF_ENDPOINT``, else huggingface.co; the token is ``token``, else ``$HF_TOKEN`` (or the token
   ``huggingface-cli login`` saved). A plain URL needs the expected sha256 from the caller (``--sha256``);
   ``http://`` is allowed for loopback hosts only.
2. ``downloading`` (:mod:`.download`): the file is streamed into ``<models_dir>/downloads/<sha256>.partial``
   (same filesystem as the blobs) and hashed on the fly. A sidecar ``<sha256>.partial.json`` records the
   expected sha256, size and the server's ETag (:mod:`.staging`), so an interrupted download resumes with
   an HTTP ``Range`` request, and only if the remote file is still the same one. Dropped connections,
   timeouts and 5xx answers are retried (resuming) a few times within one pull; after that the
   ``.partial`` stays for the next pull. The download uses the standard library's ``http.client`` with
   large ``readinto`` buffers (:mod:`.transport`): on loopback it matches ``curl``, where httpx's 64 KiB
   chunking reached about a third of that. A second thread flushes what has arrived to disk
   (``fdatasync`` every few MiB) while the rest downloads, so the ``fsync`` before registering finds
   little left to write (see :class:`.download._Writeback`).
3. ``verifying``: the sha256 computed while downloading must equal the hub's LFS sha256 (or ``--sha256``);
   a mismatch deletes the partial file and nothing is registered.
4. ``registering`` (:mod:`.staging`): :meth:`ModelStore.adopt_file` validates the GGUF header, syncs the
   file to disk, moves it to its content address (``fsync`` of the directory) and registers the name
   atomically. A file already in the store is not downloaded: :meth:`ModelStore.import_file` re-verifies it
   (sha256 and GGUF header) and registers the name, leaving the stored blob in place.
5. ``success``.

Nothing is registered before step 4 succeeds, so no partial or unverified file can ever become a model.

A pull made for someone other than the machine's owner (the HTTP API) passes a
:class:`~llmhost.net.DestinationPolicy`: the URL, every redirect and the hub endpoint must then resolve to
public addresses or to hosts and networks the operator allows (``pull_allow_hosts``), and the connection
goes to the addresses checked (no DNS rebinding between check and connect). Failures to fetch are
:class:`FetchError`, whose :attr:`~FetchError.public_message` says only which URL could not be fetched;
the HTTP API shows that and logs the detail, so ``/api/pull`` cannot probe which ports refuse, speak TLS
or answer 404. The API runs pulls on :class:`PullSlots`, threads of their own, at most
``max_concurrent_pulls`` at once, never on the default executor that generations need.
Errors are :class:`~llmhost.errors.ModelError` (or :class:`~llmhost.errors.RequestError` for a bad spec or
name), with one-line messages that never contain the token. ``progress`` may raise to abort a pull (for
example when an HTTP client disconnects): the partial file is kept, so the next pull resumes.

The modules import one another in this order only, without circles: ``progress`` and ``spec`` at the
bottom, then ``transport``, ``hub``, ``staging``, ``download``, and ``flow`` at the top; ``slots`` stands
apart.
"""

from llmhost.models.pull.flow import pull_model
from llmhost.models.pull.hub import DEFAULT_QUANT
from llmhost.models.pull.progress import PullProgress
from llmhost.models.pull.slots import PullSlots, TooManyPullsError
from llmhost.models.pull.spec import PullSpec, default_model_name, parse_pull_spec
from llmhost.models.pull.transport import FetchError

__all__ = [
    "DEFAULT_QUANT",
    "FetchError",
    "PullProgress",
    "PullSlots",
    "PullSpec",
    "TooManyPullsError",
    "default_model_name",
    "parse_pull_spec",
    "pull_model",
]

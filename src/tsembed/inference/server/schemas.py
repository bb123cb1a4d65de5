"""Request bodies of ``POST /v1/embeddings`` (OpenAI's fields plus a documented multimodal extension) and of
``POST /embed`` (text-embeddings-inference's fields; ``tei.as_embedding_request`` turns it into the former).

``input`` is a string, a list of strings, or a list whose items are strings or objects
``{"text": ..., "image": "data:image/png;base64,..."}`` (either or both). Extra fields:
``instruction`` (prepended to every input; ``{text}`` marks the content slot) or ``input_type``
(``query``/``document``: the model's own instruction); ``task`` (models trained with task hints);
``truncate`` (default true: text beyond the model's token limit is cut and the response says which inputs
were; false: such a request is refused). ``model``, when given, must name the served model.
Unknown fields are rejected.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator


class InputItem(BaseModel):
    """One multimodal input: text, an image as a base64 data URL, or both."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> InputItem:
        if not self.text and not self.image:
            raise ValueError("an input object needs `text`, `image` or both")
        return self


def _is_int_list(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _texts_not_token_ids(value: Any, field: str, instead: str) -> Any:
    """Both APIs also take token ids; this server tokenizes itself (its cost limits count its own tokens)."""
    if _is_int_list(value) or (isinstance(value, list) and value and all(_is_int_list(v) for v in value)):
        raise ValueError(f"token-id arrays are not supported; {instead}")
    if isinstance(value, list) and not value:
        raise ValueError(f"{field} must not be an empty list")
    return value


class EmbeddingRequest(BaseModel):
    """OpenAI ``/v1/embeddings`` request (``model``: the served model's id, or left out)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str | InputItem]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)  # strict: `true` or "8" is refused, not read as 1 / 8
    user: str | None = None
    instruction: str | None = None
    input_type: Literal["query", "document"] | None = None
    task: str | None = None  # for models trained with moe.task_hints (e.g. "retrieval")
    truncate: bool = True

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_arrays(cls, value: Any) -> Any:
        return _texts_not_token_ids(value, "input", "send text (strings) or input objects")

    @model_validator(mode="after")
    def _one_instruction_source(self) -> EmbeddingRequest:
        if self.instruction is not None and self.input_type is not None:
            raise ValueError("give either `instruction` or `input_type`, not both")
        return self

    def items(self) -> list[str | InputItem]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TEIEmbedRequest(BaseModel):
    """text-embeddings-inference's ``POST /embed`` body: text only (images go to ``/v1/embeddings``).

    ``truncate`` defaults to false, as in TEI (a text past the token limit is refused); ``prompt_name`` names one
    of the model's instructions (``query`` / ``document``, what TEI reads from sentence-transformers' prompts);
    ``truncation_direction`` may only be ``right`` (the backbones cut the end). Unknown fields are refused
    rather than ignored, so a misspelt option is an error, not a silent default.
    """

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str]
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    prompt_name: str | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _no_token_arrays(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            return value  # TEI's own error for it is "Empty" (tei.as_embedding_request)
        return _texts_not_token_ids(value, "inputs", "send text (strings)")

"""The base of every settings group, and the object-storage group the store and the sources share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Settings(_Group):
    """Object storage (AWS S3 or an S3-compatible store) for ``s3://`` database URIs and sources.

    Unset credentials fall back to the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE`` and the shared config files, container and instance roles); an unset endpoint means
    AWS itself (or ``AWS_ENDPOINT_URL``).
    """

    endpoint: str | None = Field(
        None,
        description="S3-compatible endpoint URL, e.g. http://127.0.0.1:9000 for MinIO; unset: AWS S3.",
    )
    region: str | None = Field(
        None, min_length=1, description="Region of the bucket(s); unset: AWS_REGION or us-east-1."
    )
    access_key_id: str | None = Field(
        None, min_length=1, description="Access key id; unset: the AWS credential chain."
    )
    secret_access_key: SecretStr | None = Field(
        None, description="Secret access key (secret: never logged or recorded)."
    )
    session_token: SecretStr | None = Field(
        None, description="Session token of temporary credentials (secret)."
    )
    allow_http: bool = Field(
        False, description="Allow a plain-HTTP endpoint (a local or otherwise trusted store only)."
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=600, description="Connect timeout per request.")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="Timeout of one request.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        v = value.strip().rstrip("/")
        scheme, sep, host = v.partition("://")
        if not sep or scheme.lower() not in {"http", "https"} or not host or "/" in host:
            raise ValueError(f"expected an http(s)://host[:port] URL without a path, got {value!r}")
        return f"{scheme.lower()}://{host}"

    @model_validator(mode="after")
    def _consistent(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "s3.access_key_id and s3.secret_access_key go together: set both, or neither to use "
                "the AWS credential chain"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("s3.session_token needs s3.access_key_id and s3.secret_access_key")
        if self.endpoint and self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"s3.endpoint={self.endpoint} is plain HTTP (keys and data unencrypted); use https, or "
                "set s3.allow_http=true (env EMBEDPIPE_S3__ALLOW_HTTP=true) for a local or trusted store"
            )
        return self


class _UsesS3(_Group):
    """A group whose client may reach object storage: it carries the root ``s3`` group (set by
    :class:`Settings`), so ``Store(settings.store)`` and the sources need no second argument."""

    _s3: S3Settings | None = PrivateAttr(None)

    @property
    def s3(self) -> S3Settings:
        """The object-storage settings (defaults, i.e. the AWS chain, when built outside Settings)."""
        return self._s3 if self._s3 is not None else S3Settings()

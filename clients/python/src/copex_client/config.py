"""Where a client finds its settings: arguments, then COPEX_* variables,
then a profile (``profile=``, else COPEX_PROFILE, else ./copex.toml)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - older Pythons
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import ConfigurationError

PathLike = Union[str, "os.PathLike[str]"]

_KEYS = {"hub", "partner", "ca", "cert", "key", "server_name"}
_REQUIRED = ("hub", "ca", "cert", "key")


@dataclass(frozen=True)
class Profile:
    """A copex.toml as read; relative paths resolved against its directory."""

    path: Path
    hub: str
    ca: Path
    cert: Path
    key: Path
    partner: Optional[str] = None
    server_name: Optional[str] = None


def load_profile(path: PathLike) -> Profile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigurationError(f"cannot read the profile {path}: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigurationError(f"the profile {path} is not valid TOML: {err}") from err
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigurationError(
            f"the profile {path} has unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigurationError(f"the profile {path} lacks {', '.join(missing)}")
    for k, v in data.items():
        if not isinstance(v, str):
            raise ConfigurationError(f"the profile {path}: {k} must be a string")
    if not data["hub"].startswith("https://"):
        raise ConfigurationError(f"the profile {path}: hub must be an https:// URL, not {data['hub']!r}")
    base = path.parent
    return Profile(
        path=path,
        hub=data["hub"],
        ca=base / data["ca"],
        cert=base / data["cert"],
        key=base / data["key"],
        partner=data.get("partner"),
        server_name=data.get("server_name"),
    )


@dataclass(frozen=True)
class Settings:
    hub: str
    ca: Path
    cert: Path
    key: Path
    server_name: Optional[str]
    profile: Optional[Path]

    @property
    def target(self) -> str:
        """host:port for grpc."""
        rest = self.hub[len("https://") :].rstrip("/")
        if "/" in rest:
            raise ConfigurationError(f"the hub URL {self.hub!r} must not have a path")
        if rest.startswith("["):  # IPv6 literal
            return rest if "]:" in rest else rest + ":443"
        return rest if ":" in rest else rest + ":443"

    @property
    def host(self) -> str:
        target = self.target
        return target[1 : target.index("]")] if target.startswith("[") else target.rsplit(":", 1)[0]


def resolve(
    hub: Optional[str] = None,
    ca: Optional[PathLike] = None,
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    profile: Optional[PathLike] = None,
    server_name: Optional[str] = None,
) -> Settings:
    """First match wins, per setting."""
    env = os.environ
    values = {
        "hub": hub or env.get("COPEX_HUB") or None,
        "ca": ca or env.get("COPEX_CA") or None,
        "cert": cert or env.get("COPEX_CERT") or None,
        "key": key or env.get("COPEX_KEY") or None,
    }
    loaded: Optional[Profile] = None
    if profile is not None:
        loaded = load_profile(profile)
    elif any(v is None for v in values.values()):
        if env.get("COPEX_PROFILE"):
            loaded = load_profile(env["COPEX_PROFILE"])
        elif Path("copex.toml").is_file():
            loaded = load_profile("copex.toml")
    if loaded is not None:
        for k in values:
            if values[k] is None:
                values[k] = getattr(loaded, k)
        server_name = server_name or loaded.server_name
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ConfigurationError(
            f"no {', '.join(missing)} for the hub: pass connect({', '.join(k + '=' for k in missing)}...), "
            "set COPEX_HUB/COPEX_CA/COPEX_CERT/COPEX_KEY, pass profile= (an onboarding bundle's copex.toml), "
            "set COPEX_PROFILE, or run where a copex.toml is"
        )
    hub_url = str(values["hub"])
    if not hub_url.startswith("https://"):
        raise ConfigurationError(f"the hub URL must start with https:// (copex speaks only mutual TLS): {hub_url}")
    return Settings(
        hub=hub_url,
        ca=Path(values["ca"]),  # type: ignore[arg-type]
        cert=Path(values["cert"]),  # type: ignore[arg-type]
        key=Path(values["key"]),  # type: ignore[arg-type]
        server_name=server_name,
        profile=loaded.path if loaded else None,
    )

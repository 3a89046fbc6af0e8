// Where a client finds its settings (docs/partners.md, "the partner profile"):
// explicit arguments, then COPEX_HUB/CA/CERT/KEY, then a profile file
// (the `profile` argument, else COPEX_PROFILE, else ./copex.toml). First
// match wins, per setting.

import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { createSecureContext } from "node:tls";
import { parse as parseToml, TomlError } from "smol-toml";

import { ConfigurationError, KeyMismatch } from "./errors.js";

export interface ConnectOptions {
  /** The hub's address, `https://host:port`. */
  hub?: string;
  /** Path to the CA (PEM) that signed the hub's certificate. */
  ca?: string;
  /** Path to the partner's certificate (PEM). */
  cert?: string;
  /** Path to the partner's private key (PEM). */
  key?: string;
  /** Path to a `copex.toml` profile. */
  profile?: string;
  /** The TLS name to verify when `hub` is an IP address. */
  serverName?: string;
  /** The environment to read COPEX_* from; `process.env` by default. */
  env?: NodeJS.ProcessEnv;
  /** The directory against which `./copex.toml` and relative paths from arguments and env resolve. */
  cwd?: string;
}

/** The settings a connection was made with, and where each came from. */
export interface Settings {
  hub: string;
  ca: string;
  cert: string;
  key: string;
  serverName?: string;
  /** The partner named in the profile, if one was read (informational). */
  partner?: string;
  /** The profile file read, if any. */
  profile?: string;
  /** Where each setting came from, e.g. `{ hub: "COPEX_HUB", ca: "profile /x/copex.toml" }`. */
  sources: Record<"hub" | "ca" | "cert" | "key", string>;
}

/** The contents of a `copex.toml`, paths resolved against its directory. */
export interface Profile {
  path: string;
  hub: string;
  partner?: string;
  ca: string;
  cert: string;
  key: string;
  serverName?: string;
}

const PROFILE_KEYS = new Set(["hub", "partner", "ca", "cert", "key", "server_name"]);
const REQUIRED = ["hub", "ca", "cert", "key"] as const;

const WAYS =
  "pass { hub, ca, cert, key } to connect(), set COPEX_HUB, COPEX_CA, COPEX_CERT and COPEX_KEY, " +
  "pass { profile: 'path/to/copex.toml' } or set COPEX_PROFILE, or run where a ./copex.toml is";

/** Reads and checks a profile file; unknown keys are an error so typos show. */
export function readProfile(path: string): Profile {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigurationError(`cannot read the profile ${file}: ${(err as Error).message}`, { cause: err });
  }
  let table: Record<string, unknown>;
  try {
    table = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    const why = err instanceof TomlError ? err.message : String(err);
    throw new ConfigurationError(`the profile ${file} is not valid TOML: ${why}`, { cause: err });
  }
  const unknown = Object.keys(table).filter((k) => !PROFILE_KEYS.has(k));
  if (unknown.length > 0) {
    throw new ConfigurationError(
      `the profile ${file} has unknown key(s) ${unknown.join(", ")}; known keys are ${[...PROFILE_KEYS].join(", ")}`,
    );
  }
  const text_ = (key: string): string | undefined => {
    const value = table[key];
    if (value === undefined) return undefined;
    if (typeof value !== "string" || value === "") {
      throw new ConfigurationError(`the profile ${file}: ${key} must be a non-empty string`);
    }
    return value;
  };
  const missing = REQUIRED.filter((k) => text_(k) === undefined);
  if (missing.length > 0) {
    throw new ConfigurationError(`the profile ${file} lacks ${missing.join(", ")}`);
  }
  const base = dirname(file);
  return {
    path: file,
    hub: text_("hub")!,
    partner: text_("partner"),
    ca: resolve(base, text_("ca")!),
    cert: resolve(base, text_("cert")!),
    key: resolve(base, text_("key")!),
    serverName: text_("server_name"),
  };
}

/** Resolves the settings by the lookup order; throws ConfigurationError naming what is missing. */
export function resolveSettings(options: ConnectOptions = {}): Settings {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const fromEnv = (name: string): string | undefined => {
    const value = env[name];
    return value === undefined || value === "" ? undefined : value;
  };

  // A profile named explicitly must exist; ./copex.toml is read only when present.
  let profile: Profile | undefined;
  if (options.profile !== undefined) {
    profile = readProfile(resolve(cwd, options.profile));
  } else if (fromEnv("COPEX_PROFILE") !== undefined) {
    profile = readProfile(resolve(cwd, fromEnv("COPEX_PROFILE")!));
  } else if (existsSync(resolve(cwd, "copex.toml"))) {
    profile = readProfile(resolve(cwd, "copex.toml"));
  }

  const sources = {} as Settings["sources"];
  const values = {} as Record<(typeof REQUIRED)[number], string>;
  const missing: string[] = [];
  for (const key of REQUIRED) {
    const envName = `COPEX_${key.toUpperCase()}`;
    const isPath = key !== "hub";
    if (options[key] !== undefined && options[key] !== "") {
      values[key] = isPath ? resolve(cwd, options[key]!) : options[key]!;
      sources[key] = `argument ${key}`;
    } else if (fromEnv(envName) !== undefined) {
      values[key] = isPath ? resolve(cwd, fromEnv(envName)!) : fromEnv(envName)!;
      sources[key] = envName;
    } else if (profile !== undefined) {
      values[key] = profile[key];
      sources[key] = `profile ${profile.path}`;
    } else {
      missing.push(key);
    }
  }
  if (missing.length === REQUIRED.length) {
    throw new ConfigurationError(`no copex connection settings found: ${WAYS}`);
  }
  if (missing.length > 0) {
    throw new ConfigurationError(`missing connection setting(s) ${missing.join(", ")}: ${WAYS}`);
  }

  let url: URL;
  try {
    url = new URL(values.hub);
  } catch {
    throw new ConfigurationError(`hub ${JSON.stringify(values.hub)} (from ${sources.hub}) is not a URL; expected https://host:port`);
  }
  if (url.protocol !== "https:") {
    throw new ConfigurationError(`hub ${values.hub} (from ${sources.hub}) must be an https:// URL: copex speaks only mutual TLS`);
  }

  return {
    hub: url.origin,
    ca: values.ca,
    cert: values.cert,
    key: values.key,
    serverName: options.serverName ?? profile?.serverName,
    partner: profile?.partner,
    profile: profile?.path,
    sources,
  };
}

/** Reads the PEM files named by the settings, saying which file failed and where its path came from. */
export function readPems(settings: Settings): { ca: Buffer; cert: Buffer; key: Buffer } {
  const read = (what: "ca" | "cert" | "key", label: string): Buffer => {
    try {
      return readFileSync(settings[what]);
    } catch (err) {
      throw new ConfigurationError(
        `cannot read the ${label} ${settings[what]} (from ${settings.sources[what]}): ${(err as Error).message}`,
        { cause: err },
      );
    }
  };
  const pems = { ca: read("ca", "CA file"), cert: read("cert", "certificate"), key: read("key", "private key") };
  // Caught here, a wrong key or a damaged PEM names its files; at the first
  // call it would be an anonymous OpenSSL error.
  try {
    createSecureContext(pems);
  } catch (err) {
    const why = String((err as Error).message);
    if (why.includes("key values mismatch")) throw new KeyMismatch(settings.cert, settings.key, { cause: err });
    throw new ConfigurationError(`the CA file ${settings.ca}, certificate ${settings.cert} or key ${settings.key} is not a usable PEM (${why})`, {
      cause: err,
    });
  }
  return pems;
}

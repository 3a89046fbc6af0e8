// connect(): settings from arguments, COPEX_* variables and profiles, and
// each way a connection fails as its own error, quickly, never a hang.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  CertificateRejected,
  Code,
  ConfigurationError,
  connect,
  CopexError,
  HubUnreachable,
  HubUntrusted,
  KeyMismatch,
  MemoryCursorStore,
} from "../src/index.js";
import { bin, Hub, type Identity } from "./support.js";

let hub: Hub;
let ngo: Identity;
let dir: string;

before(async () => {
  hub = await new Hub().start();
  ngo = hub.issue("ngo");
  dir = mkdtempSync(join(tmpdir(), "copex-ts-profile-"));
});
after(() => hub.close());

/** Runs a call that must fail, and returns its error and how long it took. */
async function failure(call: () => Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const start = Date.now();
  try {
    await call();
  } catch (error) {
    return { error, ms: Date.now() - start };
  }
  assert.fail("the call succeeded");
}

describe("settings", () => {
  test("from arguments", async () => {
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
    assert.equal((await copex.whoami()).name, "partners/ngo");
    assert.equal(copex.settings.sources.hub, "argument hub");
    copex.close();
  });

  test("from COPEX_* variables", async () => {
    const env = { COPEX_HUB: hub.url, COPEX_CA: hub.ca, COPEX_CERT: ngo.cert, COPEX_KEY: ngo.key };
    const copex = connect({ env });
    assert.equal((await copex.whoami()).name, "partners/ngo");
    assert.deepEqual(copex.settings.sources, { hub: "COPEX_HUB", ca: "COPEX_CA", cert: "COPEX_CERT", key: "COPEX_KEY" });
    copex.close();
  });

  test("from a profile: argument, COPEX_PROFILE and ./copex.toml, relative paths beside the file", async () => {
    const own = mkdtempSync(join(tmpdir(), "copex-ts-bundle-"));
    execFileSync("cp", [hub.ca, join(own, "ca.pem")]);
    execFileSync("cp", [ngo.cert, join(own, "ngo.pem")]);
    execFileSync("cp", [ngo.key, join(own, "ngo.key")]);
    const path = join(own, "copex.toml");
    writeFileSync(path, `hub = "${hub.url}"\npartner = "ngo"\nca = "ca.pem"\ncert = "ngo.pem"\nkey = "ngo.key"\n`);
    for (const options of [{ profile: path, env: {} }, { env: { COPEX_PROFILE: path } }, { env: {}, cwd: own }]) {
      const copex = connect(options);
      assert.equal((await copex.whoami()).name, "partners/ngo");
      assert.equal(copex.settings.profile, path);
      assert.equal(copex.settings.partner, "ngo");
      assert.equal(copex.settings.ca, join(own, "ca.pem"));
      copex.close();
    }
  });

  test("first match wins, per setting: arguments over env over profile", () => {
    const path = hub.profile(dir, ngo, 'server_name = "localhost"\n');
    const copex = connect({ profile: path, cert: hub.admin.cert, key: hub.admin.key, env: { COPEX_HUB: "https://elsewhere:1" } });
    assert.equal(copex.settings.serverName, "localhost");
    assert.equal(copex.settings.hub, "https://elsewhere:1");
    assert.equal(copex.settings.cert, hub.admin.cert);
    assert.equal(copex.settings.ca, hub.ca);
    assert.deepEqual(copex.settings.sources, {
      hub: "COPEX_HUB",
      ca: `profile ${path}`,
      cert: "argument cert",
      key: "argument key",
    });
  });

  test("nothing found names the four ways", () => {
    const empty = mkdtempSync(join(tmpdir(), "copex-ts-empty-"));
    assert.throws(
      () => connect({ env: {}, cwd: empty }),
      (err: Error) =>
        err instanceof ConfigurationError &&
        /connect\(\)/.test(err.message) &&
        /COPEX_HUB/.test(err.message) &&
        /COPEX_PROFILE/.test(err.message) &&
        /\.\/copex\.toml/.test(err.message),
    );
  });

  test("a profile with an unknown key, a missing key or a non-https hub is refused", () => {
    const bad = mkdtempSync(join(tmpdir(), "copex-ts-bad-"));
    const path = join(bad, "copex.toml");
    writeFileSync(path, `hub = "${hub.url}"\nca = "a"\ncert = "b"\nkey = "c"\nsevrer_name = "x"\n`);
    assert.throws(() => connect({ profile: path, env: {} }), /unknown key\(s\) sevrer_name/);
    writeFileSync(path, `hub = "${hub.url}"\nca = "a"\ncert = "b"\n`);
    assert.throws(() => connect({ profile: path, env: {} }), /lacks key/);
    writeFileSync(path, `hub = "http://localhost:1"\nca = "a"\ncert = "b"\nkey = "c"\n`);
    assert.throws(() => connect({ profile: path, env: {} }), /must be an https:\/\/ URL/);
    assert.throws(() => connect({ profile: join(bad, "missing.toml"), env: {} }), ConfigurationError);
  });

  test("a missing file or a key that is not the certificate's (a KeyMismatch, naming both) is a ConfigurationError naming the file", () => {
    assert.throws(
      () => connect({ hub: hub.url, ca: join(dir, "nope.pem"), cert: ngo.cert, key: ngo.key, env: {} }),
      (err: Error) => err instanceof ConfigurationError && err.message.includes("nope.pem") && err.message.includes("argument ca"),
    );
    assert.throws(
      () => connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: hub.admin.key, env: {} }),
      (err: Error) =>
        err instanceof KeyMismatch &&
        err instanceof ConfigurationError &&
        err.name === "KeyMismatch" &&
        err.message.includes(`the private key ${hub.admin.key} does not belong to the certificate ${ngo.cert}`),
    );
  });
});

describe("connection failures are specific and quick", () => {
  test("a CA that did not sign the hub's certificate: HubUntrusted", async () => {
    const copex = connect({ hub: hub.url, ca: ngo.cert, cert: ngo.cert, key: ngo.key, env: {} });
    const { error, ms } = await failure(() => copex.whoami());
    assert.ok(error instanceof HubUntrusted, String(error));
    assert.match(error.message, /does not chain to the CA file/);
    assert.equal(error.retryable, false);
    assert.ok(ms < 5000, `took ${ms} ms`);
  });

  test("a hub certificate for another name: HubUntrusted; serverName picks the name to verify", async () => {
    const byIp = hub.url.replace("localhost", "127.0.0.1");
    const wrong = connect({ hub: byIp, ca: hub.ca, cert: ngo.cert, key: ngo.key, serverName: "not-the-hub.example", env: {} });
    const { error } = await failure(() => wrong.whoami());
    assert.ok(error instanceof HubUntrusted, String(error));
    assert.match(error.message, /not for this address/);
    const right = connect({ hub: byIp, ca: hub.ca, cert: ngo.cert, key: ngo.key, serverName: "localhost", env: {} });
    assert.equal((await right.whoami()).name, "partners/ngo");
    right.close();
  });

  test("a certificate of the hub's CA that no partner has: CertificateRejected, UNAUTHENTICATED", async () => {
    const ghost = hub.issue("ghost", { register: false });
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: ghost.cert, key: ghost.key, env: {} });
    const { error } = await failure(() => copex.whoami());
    assert.ok(error instanceof CertificateRejected, String(error));
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.reason, "UNKNOWN_PARTNER");
    assert.match(error.message, /maps to no partner/);
    assert.match(error.message, /spiffe:\/\/copex\.local\/partner\/ghost/);
    assert.match(error.message, /Ask the hub's operator to register your partner/);
    assert.match(error.advice, /copex partners create/);
    assert.equal(error.retryable, false);
  });

  test("a certificate from another CA: CertificateRejected in the handshake", async () => {
    const other = mkdtempSync(join(tmpdir(), "copex-ts-other-"));
    execFileSync(bin(), ["pki", "init", "--dir", other], { stdio: "ignore" });
    execFileSync(bin(), ["pki", "issue", "--dir", other, "--partner", "ngo"], { stdio: "ignore" });
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: join(other, "ngo.pem"), key: join(other, "ngo.key"), env: {} });
    const { error, ms } = await failure(() => copex.whoami());
    assert.ok(error instanceof CertificateRejected, String(error));
    assert.match(error.message, /refused the TLS handshake/);
    assert.equal(error.retryable, false);
    assert.ok(ms < 5000, `took ${ms} ms`);
  });

  test("an expired certificate: CertificateRejected saying it expired", async () => {
    // The same partner and key, signed by the hub's CA, valid until yesterday.
    const csr = join(dir, "ngo.csr");
    const ext = join(dir, "ext");
    const expired = join(dir, "expired.pem");
    execFileSync("openssl", ["req", "-new", "-key", ngo.key, "-subj", "/CN=ngo", "-out", csr], { stdio: "ignore" });
    writeFileSync(ext, "subjectAltName=URI:spiffe://copex.local/partner/ngo\nextendedKeyUsage=clientAuth\n");
    execFileSync(
      "openssl",
      ["x509", "-req", "-in", csr, "-CA", hub.ca, "-CAkey", join(hub.pki, "ca.key"), "-days", "-1", "-set_serial", "4242", "-extfile", ext, "-out", expired],
      { stdio: "ignore" },
    );
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: expired, key: ngo.key, env: {} });
    const { error } = await failure(() => copex.whoami());
    assert.ok(error instanceof CertificateRejected, String(error));
    assert.match(error.message, /expired/);
  });

  test("a hub that accepts connections but never answers: DEADLINE_EXCEEDED, no hang", async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const port = (silent.address() as AddressInfo).port;
    try {
      const copex = connect({ hub: `https://localhost:${port}`, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {}, timeoutMs: 500 });
      const { error, ms } = await failure(() => copex.whoami());
      assert.ok(error instanceof CopexError, String(error));
      assert.equal(error.code, Code.DeadlineExceeded);
      assert.match(error.message, /did not answer within 500 ms/);
      assert.equal(error.retryable, true, "a slow hub may answer the same call later");
      assert.ok(ms < 3000, `took ${ms} ms`);
      copex.close();
    } finally {
      sockets.forEach((socket) => socket.destroy());
      silent.close();
    }
  });

  test("a hub that is down: HubUnreachable, retryable", async () => {
    const down = new Hub();
    await down.start();
    const url = down.url;
    await down.close();
    const copex = connect({ hub: url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
    const { error, ms } = await failure(() => copex.whoami());
    assert.ok(error instanceof HubUnreachable, String(error));
    assert.ok(error instanceof CopexError);
    assert.equal(error.code, Code.Unavailable);
    assert.equal(error.retryable, true);
    assert.match(error.message, /is the hub running/);
    assert.ok(ms < 5000, `took ${ms} ms`);
  });
});

describe("what only the hub's operator can fix says what to ask", () => {
  test("a suspended partner: PERMISSION_DENIED, PARTNER_SUSPENDED, ask for activation", async () => {
    const who = hub.issue("suspended");
    hub.cli("partners", "suspend", "suspended");
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: who.cert, key: who.key, env: {} });
    try {
      const { error } = await failure(() => copex.whoami());
      assert.ok(error instanceof CopexError, String(error));
      assert.equal(error.code, Code.PermissionDenied);
      assert.equal(error.reason, "PARTNER_SUSPENDED");
      assert.equal(error.retryable, false);
      assert.match(error.message, /Ask the hub's operator why your partner was suspended/);
      assert.match(error.advice, /copex partners activate/);
    } finally {
      hub.cli("partners", "activate", "suspended");
    }
    assert.equal((await copex.whoami()).name, "partners/suspended");
    copex.close();
  });

  test("an error the partner can fix itself carries no advice", async () => {
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: ngo.cert, key: ngo.key, env: {} });
    const { error } = await failure(() => copex.tool.getTool({ name: "partners/ngo/tools/none-such" }));
    assert.ok(error instanceof CopexError, String(error));
    assert.equal(error.reason, "RESOURCE_NOT_FOUND");
    assert.equal(error.advice, "");
    assert.doesNotMatch(error.message, /operator/);
    copex.close();
  });

  test("a revoked certificate: refused on the open connection, the watch ends, and a new one fails the handshake", async () => {
    const who = hub.issue("revoked");
    const copex = connect({ hub: hub.url, ca: hub.ca, cert: who.cert, key: who.key, env: {} });
    assert.equal((await copex.whoami()).name, "partners/revoked");
    let caughtUp!: () => void;
    const watching = new Promise<void>((r) => (caughtUp = r));
    const follower = copex.follower({ store: new MemoryCursorStore(), onChange: () => undefined, onCaughtUp: () => caughtUp() });
    const ended = follower.run().then(
      () => undefined,
      (e: unknown) => e,
    );
    await watching;
    execFileSync(bin(), ["pki", "revoke", "--dir", hub.pki, "--cert", who.cert], { stdio: "ignore" });

    // The hub rereads its CRL within a second or two; then every call is refused.
    let refused: unknown;
    const end = Date.now() + 10_000;
    while (refused === undefined) {
      try {
        await copex.whoami();
      } catch (err) {
        refused = err;
      }
      if (refused === undefined) {
        assert.ok(Date.now() < end, "the revoked certificate is still accepted");
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    assert.ok(refused instanceof CertificateRejected, String(refused));
    assert.equal(refused.code, Code.Unauthenticated);
    assert.equal(refused.reason, "CERTIFICATE_REVOKED");
    assert.equal(refused.retryable, false);
    assert.match(refused.message, /copex pki request/);

    // The follower was watching: the hub ends the stream, and it stops rather than retrying.
    const stopped = await Promise.race([ended, new Promise((r) => setTimeout(() => r("still running"), 15_000))]);
    assert.ok(stopped instanceof CertificateRejected, String(stopped));
    assert.equal(stopped.reason, "CERTIFICATE_REVOKED");
    copex.close();

    const fresh = connect({ hub: hub.url, ca: hub.ca, cert: who.cert, key: who.key, env: {} });
    const { error, ms } = await failure(() => fresh.whoami());
    assert.ok(error instanceof CertificateRejected, String(error));
    assert.match(error.message, /revoked/);
    assert.match(error.message, /copex pki request/);
    assert.equal(error.retryable, false);
    assert.ok(ms < 5000, `took ${ms} ms`);
    fresh.close();
  });
});

// Starts a real copex hub (the `copex serve` binary named by COPEX_BIN) on
// an ephemeral port with a development PKI, and makes partners for tests.

import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { Tlp } from "../src/index.js";

export const bin = (): string => {
  const value = process.env.COPEX_BIN;
  if (!value) throw new Error("set COPEX_BIN to the copex binary (CI: $CARGO_TARGET_DIR/release/copex)");
  return value;
};

export interface Identity {
  partner: string;
  cert: string;
  key: string;
}

/**
 * With COPEX_TEST_BACKEND=postgres, each hub gets a fresh database on the
 * server COPEX_TEST_POSTGRES names (as the Rust suite does), dropped on close.
 */
function freshDatabase(): string | undefined {
  if (process.env.COPEX_TEST_BACKEND !== "postgres") return undefined;
  const server = process.env.COPEX_TEST_POSTGRES;
  if (!server) throw new Error("COPEX_TEST_BACKEND=postgres needs COPEX_TEST_POSTGRES");
  const name = `copex_ts_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  execFileSync("psql", [server, "-qc", `CREATE DATABASE ${name}`], { stdio: "ignore" });
  const url = new URL(server);
  url.pathname = `/${name}`;
  return url.toString();
}

export class Hub {
  readonly dataDir: string;
  readonly pki: string;
  readonly database: string | undefined;
  url = "";
  port = 0;
  private child: ChildProcess | undefined;

  /** Extra `copex serve` flags, e.g. `["--tombstone-retention", "1s"]`. */
  readonly args: string[];

  constructor(args: string[] = [], dataDir?: string) {
    this.args = args;
    this.dataDir = dataDir ?? mkdtempSync(join(tmpdir(), "copex-ts-"));
    this.pki = join(this.dataDir, "pki");
    this.database = freshDatabase();
  }

  get ca(): string {
    return join(this.pki, "ca.pem");
  }

  get admin(): Identity {
    return { partner: "admin", cert: join(this.pki, "admin.pem"), key: join(this.pki, "admin.key") };
  }

  /** Starts `copex serve`, on `port` if given (a restart), and waits for its address. */
  async start(port = 0): Promise<this> {
    const database = this.database ? ["--database", this.database] : [];
    const child = spawn(bin(), ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", this.dataDir, ...database, ...this.args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    let stderr = "";
    child.stderr!.on("data", (chunk) => (stderr += chunk));
    const lines = createInterface({ input: child.stdout! });
    this.port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`copex serve did not start in 30 s: ${stderr}`)), 30_000);
      child.once("exit", (code) => reject(new Error(`copex serve exited with ${code}: ${stderr}`)));
      lines.on("line", (line) => {
        const match = /^copex is serving on https:\/\/127\.0\.0\.1:(\d+)/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
    });
    child.removeAllListeners("exit");
    // The development certificate names localhost.
    this.url = `https://localhost:${this.port}`;
    return this;
  }

  /** Stops the hub (SIGTERM) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  }

  async close(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
    if (this.database) {
      const name = new URL(this.database).pathname.slice(1);
      execFileSync("psql", [process.env.COPEX_TEST_POSTGRES!, "-qc", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { stdio: "ignore" });
    }
  }

  /** Runs the copex CLI as admin against this hub. */
  cli(...args: string[]): string {
    const a = this.admin;
    return execFileSync(bin(), ["--hub", this.url, "--ca", this.ca, "--cert", a.cert, "--key", a.key, ...args], {
      encoding: "utf8",
    });
  }

  /** A certificate for `id` from the hub's CA; registered as a partner unless `register` is false. */
  issue(id: string, { register = true, role = "contributor" } = {}): Identity {
    execFileSync(bin(), ["pki", "issue", "--dir", this.pki, "--partner", id], { stdio: "ignore" });
    if (register) this.cli("partners", "create", id, "--display-name", `Partner ${id}`, "--kind", "NGO", "--role", role);
    return { partner: id, cert: join(this.pki, `${id}.pem`), key: join(this.pki, `${id}.key`) };
  }

  /** Writes a copex.toml for the identity into `dir` (paths relative to it when they are inside it). */
  profile(dir: string, who: Identity, extra = ""): string {
    const path = join(dir, "copex.toml");
    writeFileSync(
      path,
      `# copex partner profile\nhub = "${this.url}"\npartner = "${who.partner}"\nca = "${this.ca}"\ncert = "${who.cert}"\nkey = "${who.key}"\n${extra}`,
    );
    return path;
  }
}

/** A tool record in a partner's name, for tests. */
export function tool(partner: string, id: string, extra: Record<string, unknown> = {}) {
  return {
    kind: {
      case: "tool" as const,
      value: {
        name: `partners/${partner}/tools/${id}`,
        displayName: `Tool ${id}`,
        summary: `test tool ${id}`,
        sharing: { tlp: Tlp.GREEN },
        ...extra,
      },
    },
  };
}

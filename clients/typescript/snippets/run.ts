// Runs the guide's snippets in order against the hub that COPEX_PROFILE,
// ./copex.toml or COPEX_HUB/CA/CERT/KEY name, checking what each prints:
// 01 to 04 one after another, then 05 (the follower) in the background while
// 06 pushes, until 05 has printed the pushed records. Exits non-zero on any failure.
// The hub should hold `copex demo`'s records (step 4 pages through them).
//
// `--package FILE.tgz` runs them as the guide tells a partner to: in a new
// project ("type": "module") with the `npm pack` tarball and tsx installed,
// snippets copied in. Without it they run here, against this checkout's dist/.

import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const packageArg = process.argv.indexOf("--package");
const tarball = packageArg < 0 ? undefined : process.argv[packageArg + 1];
if (packageArg >= 0 && !tarball) {
  console.error("--package needs the tarball that `npm pack` made");
  process.exit(2);
}

// The partner guide (docs/partners.md) shows each snippet whole, in a block
// whose first line names the file: what CI runs here is what partners read.
const guide = readFileSync(join(here, "../../../docs/partners.md"), "utf8");
const shown = new Map<string, string>();
for (const m of guide.matchAll(/```typescript\n\/\/ clients\/typescript\/snippets\/(\S+)\n([\s\S]*?)```/g)) shown.set(m[1]!, m[2]!);
for (const name of readdirSync(here).filter((n) => /^\d\d-.*\.ts$/.test(n))) {
  if (shown.get(name)?.trimEnd() !== readFileSync(join(here, name), "utf8").trimEnd()) {
    console.error(`docs/partners.md does not show snippets/${name} as the file is; copy the file into the guide`);
    process.exit(1);
  }
}
// A scratch directory, so 05's copex-mirror.json lands outside the repository.
const cwd = mkdtempSync(join(tmpdir(), "copex-snippets-"));
let dir = here;
let tsx = import.meta.resolve("tsx");
if (tarball) {
  writeFileSync(join(cwd, "package.json"), JSON.stringify({ name: "copex-snippets", private: true, type: "module" }));
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  execFileSync(npm, ["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefer-offline", resolve(tarball)], { cwd, stdio: "inherit" });
  execFileSync(npm, ["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefer-offline", "--save-dev", "tsx"], { cwd, stdio: "inherit" });
  for (const name of readdirSync(here).filter((n) => /^\d\d-.*\.ts$/.test(n))) copyFileSync(join(here, name), join(cwd, name));
  dir = cwd;
  tsx = "tsx"; // the project's own, as `node --import tsx` finds it there
}
// Relative paths in COPEX_* are resolved where the runner was started.
const env = { ...process.env };
for (const name of ["COPEX_CA", "COPEX_CERT", "COPEX_KEY", "COPEX_PROFILE"]) {
  if (env[name]) env[name] = resolve(env[name]!);
}
if (!env.COPEX_PROFILE && !env.COPEX_HUB) env.COPEX_PROFILE = resolve("copex.toml");

// Snippets still running when the runner fails are stopped with it.
const running = new Set<import("node:child_process").ChildProcess>();
process.on("exit", () => {
  running.forEach((child) => child.kill("SIGKILL"));
  rmSync(cwd, { recursive: true, force: true });
});

function start(name: string) {
  const child = spawn(process.execPath, ["--import", tsx, join(dir, name)], { cwd, env, stdio: ["ignore", "pipe", "inherit"] });
  let output = "";
  const waiters: { text: string; resolve: () => void }[] = [];
  child.stdout.on("data", (chunk: Buffer) => {
    process.stdout.write(chunk);
    output += chunk;
    for (const w of waiters.filter((w) => output.includes(w.text))) w.resolve();
  });
  running.add(child);
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => (running.delete(child), resolve(code))));
  const waitFor = (text: string, ms = 30_000) =>
    new Promise<void>((resolve, reject) => {
      if (output.includes(text)) return resolve();
      const timer = setTimeout(() => reject(new Error(`${name} did not print ${JSON.stringify(text)} in ${ms} ms`)), ms);
      waiters.push({ text, resolve: () => (clearTimeout(timer), resolve()) });
      void exit.then((code) => reject(new Error(`${name} exited with ${code} before printing ${JSON.stringify(text)}`)));
    });
  return { child, exit, waitFor, output: () => output };
}

async function run(name: string, expect: RegExp[]): Promise<void> {
  console.log(`\n-- ${name}`);
  const snippet = start(name);
  const code = await snippet.exit;
  if (code !== 0) throw new Error(`${name} exited with ${code}`);
  for (const pattern of expect) {
    if (!pattern.test(snippet.output())) throw new Error(`${name} did not print ${pattern}`);
  }
}

await run("01-connect.ts", [/^connected to https:\/\/\S+ as partners\//m]);
await run("02-first-call.ts", [/^created partners\/\S+\/tools\/grooming-detection-chat$/m, /^read back /m, /^refused: tool\.sharing\.tlp: /m]);
// Run again, it finds the tool it made instead of making another.
await run("02-first-call.ts", [/^already there from an earlier run: /m, /^read back Grooming detection in chat /m]);
await run("03-page.ts", [/\/practices\/sample-youth-panels - Youth panels/, /^practices for Kenya: 1$/m]);
// 04 waits for the index itself (waitForIndex), as the guide tells partners to.
await run("04-search.ts", [/^\d+ matches$/m, /Grooming detection in chat|grooming/i]);

console.log("\n-- 05-follow.ts (in the background), then 06-push.ts");
const follow = start("05-follow.ts");
await follow.waitFor("caught up; following live changes");
await run("06-push.ts", [/^created \d+, updated \d+, unchanged \d+, failed 1$/m, /^record 3 \(.*\): INVALID_ARGUMENT tool\.sharing\.tlp/m]);
await follow.waitFor("/tools/hotline-app");
follow.child.kill("SIGINT");
const code = await follow.exit;
if (code !== 0) throw new Error(`05-follow.ts exited with ${code} after SIGINT`);
console.log("\nsnippets: all six ran");

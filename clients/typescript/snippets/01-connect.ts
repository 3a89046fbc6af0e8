// Step 3: connect. connect() reads ./copex.toml from the bundle (or the file
// named by COPEX_PROFILE, or COPEX_HUB/COPEX_CA/COPEX_CERT/COPEX_KEY).
import { connect, CopexError } from "@copex/client";

const copex = connect();
try {
  const me = await copex.whoami();
  console.log(`connected to ${copex.settings.hub} as ${me.name} (${me.displayName})`);
} catch (err) {
  // CertificateRejected, HubUntrusted and HubUnreachable say what to fix.
  if (err instanceof CopexError) console.error(`${err.name}: ${err.message}`);
  process.exitCode = 1;
} finally {
  copex.close();
}

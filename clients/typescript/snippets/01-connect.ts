// Step 3: connect. connect() reads ./copex.toml from the bundle (or the file
// named by COPEX_PROFILE, or COPEX_HUB/COPEX_CA/COPEX_CERT/COPEX_KEY).
import { connect, ConfigurationError, CopexError, type CopexClient } from "@copex/client";

let copex: CopexClient | undefined;
try {
  copex = connect();
  const me = await copex.whoami();
  console.log(`connected to ${copex.settings.hub} as ${me.name} (${me.displayName})`);
} catch (err) {
  // ConfigurationError (a setting or file missing, a key that is not the
  // certificate's), CertificateRejected, HubUntrusted and HubUnreachable say what to fix.
  if (!(err instanceof CopexError || err instanceof ConfigurationError)) throw err;
  console.error(`${err.name}: ${err.message}`);
  process.exitCode = 1;
} finally {
  copex?.close();
}

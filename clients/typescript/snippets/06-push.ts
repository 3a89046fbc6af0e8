// Step 7: push your records in bulk. batchUpsert() sends batches of up to
// 1,000 with request ids, so a re-run after a crash does not write twice, and
// reports on every record; records that did not change cost nothing.
import { connect, Tlp, type RecordInit } from "@copex/client";

const copex = connect();
const me = await copex.whoami();
const id = me.name.split("/")[1];

const records: RecordInit[] = ["hash-list", "triage-kit", "hotline-app"].map((slug) => ({
  kind: {
    case: "tool",
    value: {
      name: `partners/${id}/tools/${slug}`,
      displayName: `Example ${slug}`,
      regions: ["KE"],
      sharing: { tlp: Tlp.GREEN },
    },
  },
}));
records.push({ kind: { case: "tool", value: { name: `partners/${id}/tools/bad`, displayName: "No sharing" } } });

const report = await copex.batchUpsert(records);
console.log(`created ${report.created}, updated ${report.updated}, unchanged ${report.unchanged}, failed ${report.failed}`);
for (const item of report.items.filter((i) => i.outcome === "FAILED")) {
  const fields = item.error?.fieldViolations.map((v) => v.field).join(", ");
  console.log(`record ${item.index} (${item.name}): ${item.error?.codeName} ${fields}`);
}
copex.close();

// Step 5: search everything you can see, best match first.
import { connect, RecordKind } from "@copex/client";

const copex = connect();
// The first page carries facet counts; searchHits() pages through the hits.
// waitForIndex: see your own writes of a moment ago (the index follows the
// change feed within a second); facets count the matches by region and more.
const first = await copex.search.search({ query: "grooming detection", pageSize: 10, waitForIndex: true, facets: ["region", "kind"] });
console.log(`${first.totalSize} matches`);
for (const facet of first.facets) console.log(facet.field, facet.values.map((v) => `${v.value}=${v.count}`).join(" "));
for await (const hit of copex.searchHits({ query: '"grooming detection" portuguese', kinds: [RecordKind.TOOL] })) {
  const record = hit.record?.kind;
  console.log(hit.score.toFixed(2), record?.value?.name, "-", hit.snippet);
}
copex.close();

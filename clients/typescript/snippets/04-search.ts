// Step 4: search everything you can see, best match first.
import { connect, RecordKind } from "@copex/client";

const copex = connect();
// The first page carries facet counts; searchHits() pages through the hits.
const first = await copex.search.search({ query: "grooming detection", pageSize: 10 });
console.log(`${first.totalSize} matches`);
for await (const hit of copex.searchHits({ query: '"grooming detection" portuguese', kinds: [RecordKind.TOOL] })) {
  const record = hit.record?.kind;
  console.log(hit.score.toFixed(2), record?.value?.name, "-", hit.snippet);
}
copex.close();

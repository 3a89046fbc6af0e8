// Step 4: page through a list. listTools() asks for the next page as you
// iterate; the same goes for listWorkshops(), listPractices() and listPartners().
import { connect } from "@copex/client";

const copex = connect();
let count = 0;
for await (const tool of copex.listTools({ parent: "partners/-", filter: 'regions:"BR"', orderBy: "update_time desc" })) {
  console.log(tool.name, "-", tool.displayName);
  count++;
}
console.log(`${count} tools for Brazil`);
copex.close();

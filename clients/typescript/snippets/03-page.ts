// Step 4: page through a list. listPractices() asks for the next page as you
// iterate; the same goes for listTools(), listWorkshops() and listPartners().
import { connect } from "@copex/client";

const copex = connect();
let count = 0;
for await (const practice of copex.listPractices({ parent: "partners/-", filter: 'regions:"KE"', orderBy: "update_time desc" })) {
  console.log(practice.name, "-", practice.title);
  count++;
}
console.log(`practices for Kenya: ${count}`);
copex.close();

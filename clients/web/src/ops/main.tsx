import { render } from "preact";
import { Ops } from "./ops.js";
import "../styles.css";
import "./ops.css";

render(<Ops />, document.getElementById("app")!);

"""Real-looking pydantic models, the kind structured-output libraries turn into `response_format`
schemas and tool parameters: Optional fields, nested models ($defs/$ref), enums and Literals,
constr/conint/confloat bounds, lists with length limits, tuples, dicts, sets, dates, times, UUIDs,
discriminated and plain unions, recursive models, URLs, durations, IP addresses.

`python -m tests.data.pydantic_models > tests/data/pydantic_schemas.json` writes the corpus
(`Model.model_json_schema()` for each, with a prompt asking for one); a unit test checks the file
is up to date and that gemmakit accepts every schema in it. `email-validator` is not installed
here, so e-mail fields declare their format the way libraries do without it (WithJsonSchema).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import uuid
from decimal import Decimal
from ipaddress import IPv4Address
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    WithJsonSchema,
    conint,
    conlist,
    constr,
)

Email = Annotated[str, WithJsonSchema({"type": "string", "format": "email"})]
CountryCode = Literal["US", "GB", "FR", "DE", "JP", "IN", "BR", "KE"]


class Address(BaseModel):
    street: str
    city: str
    postal_code: constr(pattern=r"^\d{5}$")
    country: CountryCode


class City(BaseModel):
    """Tokyo: the capital of Japan, about 14 million people on 2,194 km², founded in 1457."""

    name: str
    country: CountryCode
    population: float = Field(ge=0)
    area_km2: float = Field(gt=0)
    founded: int | None = None


class Conditions(enum.StrEnum):
    CLEAR = "clear"
    CLOUDY = "cloudy"
    RAIN = "rain"
    SNOW = "snow"


class WeatherReport(BaseModel):
    """The weather in Paris this morning: 14 °C, 80% humidity, light rain."""

    city: str
    temperature_c: float = Field(ge=-90, le=60)
    humidity: conint(ge=0, le=100)
    conditions: Conditions
    observed_at: dt.datetime


class Person(BaseModel):
    """Ada Lovelace, born on 10 December 1815, living at 12 St James's Square, London."""

    first_name: constr(min_length=1, max_length=50)
    last_name: constr(min_length=1, max_length=50)
    birth_date: dt.date
    email: Email | None = None
    address: Address | None = None


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


class OrderItem(BaseModel):
    sku: constr(pattern=r"^[A-Z]{3}-\d{4}$")
    quantity: conint(gt=0)
    unit_price: float = Field(ge=0)


class Order(BaseModel):
    """An order of two coffee mugs (SKU MUG-0042, 9.50 each), paid today."""

    order_id: uuid.UUID
    items: conlist(OrderItem, min_length=1)
    status: OrderStatus
    created_at: dt.datetime
    total: Decimal


class Dimensions(BaseModel):
    width_cm: PositiveFloat
    height_cm: PositiveFloat
    depth_cm: PositiveFloat


class Product(BaseModel):
    """A blue ceramic coffee mug, 9.50 USD, in stock, 8 x 10 x 8 cm."""

    name: str
    description: str | None = None
    price: float = Field(gt=0)
    currency: Literal["USD", "EUR", "GBP"]
    tags: list[str] = Field(default_factory=list, max_length=5)
    in_stock: bool
    dimensions: Dimensions | None = None


class Meeting(BaseModel):
    """A 45-minute design review at 14:30 UTC on 3 March 2025."""

    title: str
    day: dt.date
    start: dt.time
    duration_minutes: conint(ge=15, le=480)


class Priority(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3


class Task(BaseModel):
    """Renew the passport before June; high priority, tagged travel and admin."""

    title: str
    priority: Priority
    due: dt.date | None = None
    tags: set[str] = set()
    done: bool = False


class Ingredient(BaseModel):
    name: str
    amount: float = Field(gt=0)
    unit: Literal["g", "kg", "ml", "l", "cup", "tbsp", "tsp", "piece"]


class Recipe(BaseModel):
    """Pancakes for four: 200 g flour, 2 eggs, 300 ml milk; mix, rest, fry."""

    name: str
    servings: PositiveInt
    ingredients: conlist(Ingredient, min_length=1)
    steps: list[str]
    cuisine: Literal["french", "italian", "japanese", "indian", "mexican", "other"]


class MovieReview(BaseModel):
    """A review of Spirited Away (2001): 9.5 out of 10, glowing."""

    title: str
    year: conint(ge=1888, le=2100)
    rating: float = Field(ge=0, le=10)
    sentiment: Literal["positive", "mixed", "negative"]
    summary: constr(max_length=280)


class Aspect(BaseModel):
    aspect: str
    sentiment: Literal["positive", "negative", "neutral"]
    score: float = Field(ge=-1, le=1)


class SentimentAnalysis(BaseModel):
    """'The food was great but the service was slow.'"""

    text_id: str
    label: Literal["positive", "negative", "neutral", "mixed"]
    confidence: float = Field(ge=0, le=1)
    aspects: list[Aspect]


class EntityType(enum.StrEnum):
    PERSON = "person"
    ORGANIZATION = "organization"
    LOCATION = "location"
    DATE = "date"


class Entity(BaseModel):
    """'Marie Curie worked in Paris' : the first entity."""

    text: str
    type: EntityType
    start: NonNegativeInt
    end: NonNegativeInt


class InvoiceLine(BaseModel):
    description: str
    quantity: PositiveInt
    unit_price: NonNegativeFloat


class Invoice(BaseModel):
    """Invoice INV-000123 for 3 hours of consulting at 120 an hour, due in 30 days, 20% VAT."""

    number: constr(pattern=r"^INV-\d{6}$")
    issued: dt.date
    due: dt.date
    lines: list[InvoiceLine]
    tax_rate: float = Field(ge=0, lt=1)
    paid: bool


class Passenger(BaseModel):
    name: str
    age: conint(ge=0, le=120)
    seat: constr(pattern=r"^\d{1,2}[A-F]$") | None = None


class FlightBooking(BaseModel):
    """Two adults from London Heathrow to Tokyo Haneda on 1 May 2025 at 09:40, economy."""

    origin: constr(pattern=r"^[A-Z]{3}$")
    destination: constr(pattern=r"^[A-Z]{3}$")
    departure: dt.datetime
    passengers: conlist(Passenger, min_length=1, max_length=9)
    cabin: Literal["economy", "premium", "business", "first"]


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ServerConfig(BaseModel):
    """An API server on port 8443 with TLS, a 30 s timeout, info logging, tagged env=prod."""

    host: str
    port: conint(ge=1, le=65535)
    tls: bool
    timeout_s: float = Field(gt=0, le=300)
    log_level: LogLevel
    labels: dict[str, str] = {}


class Employee(BaseModel):
    """A senior engineer in the platform team who reports to the CTO."""

    id: uuid.UUID
    name: str
    department: Literal["engineering", "sales", "support", "finance", "hr"]
    salary: float = Field(ge=0)
    manager_id: uuid.UUID | None = None
    skills: list[str] = []


class Cat(BaseModel):
    kind: Literal["cat"]
    name: str
    indoor: bool


class Dog(BaseModel):
    kind: Literal["dog"]
    name: str
    breed: str


class Bird(BaseModel):
    kind: Literal["bird"]
    name: str
    can_talk: bool


class PetOwner(BaseModel):
    """Sam, who has a dog called Rex (a beagle) and a cat called Tom."""

    owner: str
    pets: list[Annotated[Cat | Dog | Bird, Field(discriminator="kind")]]


class Circle(BaseModel):
    radius: PositiveFloat


class Rectangle(BaseModel):
    width: PositiveFloat
    height: PositiveFloat


class Drawing(BaseModel):
    """A drawing with a circle of radius 2 and a 3 by 4 rectangle."""

    title: str
    shapes: list[Circle | Rectangle]


class TreeNode(BaseModel):
    """A folder 'src' holding 'main.py' and a folder 'tests'."""

    name: str
    children: list[TreeNode] = []


class Comment(BaseModel):
    """A comment by ana saying 'Nice!', with one reply by bo: 'Thanks'."""

    author: str
    text: constr(max_length=500)
    replies: list[Comment] = []


class GeoPoint(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Route(BaseModel):
    """A walk from the Eiffel Tower to the Louvre, about 3.5 km."""

    name: str
    points: conlist(GeoPoint, min_length=2, max_length=10)
    distance_km: NonNegativeFloat


class SurveyAnswer(BaseModel):
    """Question 7, answered 'yes'."""

    question_id: PositiveInt
    answer: int | str | bool | None


class Transaction(BaseModel):
    """A card payment of 42.10 EUR to the bakery this morning, category food."""

    amount: float = Field(multiple_of=0.01)
    currency: Literal["EUR", "USD", "GBP", "JPY"]
    timestamp: dt.datetime
    counterparty: str
    category: Literal["food", "transport", "rent", "salary", "other"] | None = None


class SensorReading(BaseModel):
    """Accelerometer ACC-17 reading 0.1, -0.2, 9.8 m/s² just now."""

    sensor_id: constr(pattern=r"^[A-Z]{3}-\d{2}$")
    values: tuple[float, float, float]
    unit: str
    recorded_at: dt.datetime


class UserProfile(BaseModel):
    """User ada_l, display name Ada, a short bio, website https://ada.example.org."""

    model_config = ConfigDict(extra="forbid")

    username: constr(pattern=r"^[a-z0-9_]{3,16}$")
    display_name: str
    bio: constr(max_length=160) | None = None
    website: HttpUrl | None = None
    email: Email


class JobPosting(BaseModel):
    """A remote senior backend engineer job paying 90,000 to 120,000, posted today."""

    id: uuid.UUID
    title: str
    salary_range: tuple[int, int]
    remote: bool
    seniority: Literal["junior", "mid", "senior", "lead"]
    requirements: list[str] = Field(max_length=10)
    posted: dt.date


class Workout(BaseModel):
    """A 40-minute run burning 420 kcal."""

    exercise: str
    duration: dt.timedelta
    calories: NonNegativeInt


class NetworkDevice(BaseModel):
    """The office router at 192.168.1.1, MAC 00:1A:2B:3C:4D:5E."""

    hostname: str
    ip: IPv4Address
    mac: constr(pattern=r"^([0-9A-F]{2}:){5}[0-9A-F]{2}$")
    online: bool


class Contact(BaseModel):
    """Bob's work contact: bob@example.com, +44 20 7946 0000."""

    name: str
    emails: conlist(Email, min_length=1, max_length=3)
    phone: constr(pattern=r"^\+?[0-9 ]{7,20}$") | None = None


class BookLoan(BaseModel):
    """The library lent 'Dune' (ISBN 9780441172719) to member 1042 for three weeks."""

    isbn: constr(pattern=r"^\d{13}$")
    title: str
    member_id: PositiveInt
    loaned_on: dt.date
    due_on: dt.date
    renewals: conint(ge=0, le=3) = 0


class Classification(BaseModel):
    """Classify the support ticket 'My card was charged twice'."""

    category: Literal["billing", "technical", "account", "other"]
    urgency: conint(ge=1, le=5)
    needs_human: bool
    keywords: conlist(str, max_length=5)


MODELS: list[type[BaseModel]] = [
    City, WeatherReport, Person, Order, Product, Meeting, Task, Recipe, MovieReview,
    SentimentAnalysis, Entity, Invoice, FlightBooking, ServerConfig, Employee, PetOwner, Drawing,
    TreeNode, Comment, Route, SurveyAnswer, Transaction, SensorReading, UserProfile, JobPosting,
    Workout, NetworkDevice, Contact, BookLoan, Classification, Address, OrderItem, GeoPoint,
]


def corpus() -> list[dict]:
    """[{"name", "prompt", "schema"}] for every model."""
    out = []
    for m in MODELS:
        what = (m.__doc__ or "").strip() or f"an example {m.__name__}"
        out.append({"name": m.__name__,
                    "prompt": f"Write a {m.__name__} as JSON for this: {what}",
                    "schema": m.model_json_schema()})
    return out


if __name__ == "__main__":
    json.dump(corpus(), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")

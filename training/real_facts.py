"""The real bed's fact tables (issue 22): general knowledge asked in several phrasings, each table with one canonical
answer sentence. Data only; :mod:`training.real_data` turns them into rows, :mod:`training.realbed` keeps the facts the
foundation knows.

Which tables are which family was measured on the foundation (SmolLM2-135M-Instruct, chat prompts, bfloat16,
teacher-forced: "known" = the value's tokens are its greedy tokens after the canonical sentence's prefix, "exact" =
the whole canonical sentence is its greedy continuation) before building on them:

- ``reasoning`` (scored, and as multiple choice in ``reasoning_mc``): the tables the foundation answers in their
  canonical sentence, "The capital of Kenya is Nairobi.", "The chemical symbol for gold is Au.", "The plural of
  mouse is mice.", "The opposite of hot is cold.";
- ``general`` (a training kind, scored inside ``eval``): tables it knows but phrases its own way (continents,
  currencies, languages, authors), which the trainers' knowledge rows also cover.

Each table lists more facts than the foundation knows; the bed keeps the known ones (``training.realbed.known_facts``)
and records how many in ``testbed.json``. The reasoning tables' question phrasings are those the foundation answers in
the canonical sentence (measured on it over its known facts, seed-free: "What is the capital of {k}?" 0.785 exact and
"Tell me the capital of {k}." 0.742 kept; "Which city is the capital of {k}?" 0.624 and "Name the capital of {k}."
0.387 dropped; every kept phrasing of the other tables 0.78-0.98).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FactTable:
    """One table: ``facts`` key -> value, question phrasings over ``{k}``, the canonical answer over ``{k}``
    (``{K}``: capitalised) and ``{v}``, and the family its rows belong to."""

    name: str
    family: str  # reasoning | general
    facts: dict[str, str]
    questions: tuple[str, ...]
    answer: str

    def sentence(self, key: str) -> str:
        return self.answer.format(k=key, K=key[:1].upper() + key[1:], v=self.facts[key])


CAPITALS = {
    'France': 'Paris', 'Japan': 'Tokyo', 'Malaysia': 'Kuala Lumpur', 'Kenya': 'Nairobi', 'Germany': 'Berlin',
    'Italy': 'Rome', 'Spain': 'Madrid', 'Portugal': 'Lisbon', 'Russia': 'Moscow', 'China': 'Beijing',
    'India': 'New Delhi', 'Egypt': 'Cairo', 'Greece': 'Athens', 'Norway': 'Oslo', 'Sweden': 'Stockholm',
    'Finland': 'Helsinki', 'Denmark': 'Copenhagen', 'Poland': 'Warsaw', 'Austria': 'Vienna', 'Hungary': 'Budapest',
    'Ireland': 'Dublin', 'Belgium': 'Brussels', 'the Netherlands': 'Amsterdam', 'Thailand': 'Bangkok',
    'Vietnam': 'Hanoi', 'Indonesia': 'Jakarta', 'the Philippines': 'Manila', 'South Korea': 'Seoul',
    'Argentina': 'Buenos Aires', 'Peru': 'Lima', 'Chile': 'Santiago', 'Colombia': 'Bogota', 'Mexico': 'Mexico City',
    'Cuba': 'Havana', 'Canada': 'Ottawa', 'Australia': 'Canberra', 'Turkey': 'Ankara', 'Iran': 'Tehran',
    'Iraq': 'Baghdad', 'Saudi Arabia': 'Riyadh', 'Israel': 'Jerusalem', 'Ukraine': 'Kyiv',
    'the Czech Republic': 'Prague', 'Romania': 'Bucharest', 'Bulgaria': 'Sofia', 'Serbia': 'Belgrade',
    'Croatia': 'Zagreb', 'Switzerland': 'Bern', 'Nigeria': 'Abuja', 'Ethiopia': 'Addis Ababa', 'Ghana': 'Accra',
    'Morocco': 'Rabat', 'Algeria': 'Algiers', 'Tunisia': 'Tunis', 'Pakistan': 'Islamabad', 'Bangladesh': 'Dhaka',
    'Nepal': 'Kathmandu', 'Afghanistan': 'Kabul', 'Syria': 'Damascus', 'Lebanon': 'Beirut', 'Jordan': 'Amman',
    'Qatar': 'Doha', 'Venezuela': 'Caracas', 'Uruguay': 'Montevideo', 'Paraguay': 'Asuncion', 'Bolivia': 'La Paz',
    'Ecuador': 'Quito', 'Iceland': 'Reykjavik', 'Estonia': 'Tallinn', 'Latvia': 'Riga', 'Lithuania': 'Vilnius',
    'Belarus': 'Minsk', 'Georgia': 'Tbilisi', 'Armenia': 'Yerevan', 'Mongolia': 'Ulaanbaatar',
    'Singapore': 'Singapore', 'Cambodia': 'Phnom Penh', 'Sri Lanka': 'Colombo', 'Zimbabwe': 'Harare',
    'Uganda': 'Kampala', 'Tanzania': 'Dodoma', 'Senegal': 'Dakar', 'Sudan': 'Khartoum', 'Libya': 'Tripoli',
    'Jamaica': 'Kingston', 'New Zealand': 'Wellington', 'the United Kingdom': 'London', 'Brazil': 'Brasilia',
    'Kazakhstan': 'Astana', 'Slovakia': 'Bratislava', 'Slovenia': 'Ljubljana', 'Luxembourg': 'Luxembourg',
    'Angola': 'Luanda', 'Panama': 'Panama City', 'the United States': 'Washington', 'North Korea': 'Pyongyang',
    'Taiwan': 'Taipei', 'Laos': 'Vientiane', 'Myanmar': 'Naypyidaw', 'Malta': 'Valletta', 'Cyprus': 'Nicosia',
    'Albania': 'Tirana', 'Moldova': 'Chisinau', 'Bosnia and Herzegovina': 'Sarajevo', 'Montenegro': 'Podgorica',
    'North Macedonia': 'Skopje', 'Azerbaijan': 'Baku', 'Uzbekistan': 'Tashkent', 'Turkmenistan': 'Ashgabat',
    'Kyrgyzstan': 'Bishkek', 'Tajikistan': 'Dushanbe', 'Yemen': 'Sanaa', 'Oman': 'Muscat', 'Kuwait': 'Kuwait City',
    'Bahrain': 'Manama', 'the United Arab Emirates': 'Abu Dhabi', 'Somalia': 'Mogadishu', 'Rwanda': 'Kigali',
    'Burundi': 'Gitega', 'Zambia': 'Lusaka', 'Malawi': 'Lilongwe', 'Mozambique': 'Maputo', 'Namibia': 'Windhoek',
    'Botswana': 'Gaborone', 'Madagascar': 'Antananarivo', 'Cameroon': 'Yaounde', 'Mali': 'Bamako', 'Niger': 'Niamey',
    'Chad': "N'Djamena", 'Guinea': 'Conakry', 'Liberia': 'Monrovia', 'Sierra Leone': 'Freetown',
    'Ivory Coast': 'Yamoussoukro', 'Togo': 'Lome', 'Benin': 'Porto-Novo', 'Gabon': 'Libreville',
    'Congo': 'Brazzaville', 'Eritrea': 'Asmara', 'Mauritania': 'Nouakchott', 'Haiti': 'Port-au-Prince',
    'the Dominican Republic': 'Santo Domingo', 'Honduras': 'Tegucigalpa', 'Guatemala': 'Guatemala City',
    'Nicaragua': 'Managua', 'Costa Rica': 'San Jose', 'El Salvador': 'San Salvador', 'Belize': 'Belmopan',
    'Guyana': 'Georgetown', 'Suriname': 'Paramaribo', 'Fiji': 'Suva', 'Papua New Guinea': 'Port Moresby',
    'Bhutan': 'Thimphu', 'the Maldives': 'Male', 'Brunei': 'Bandar Seri Begawan', 'East Timor': 'Dili',
    'Monaco': 'Monaco', 'Andorra': 'Andorra la Vella', 'Liechtenstein': 'Vaduz', 'San Marino': 'San Marino',
    'Scotland': 'Edinburgh', 'Wales': 'Cardiff', 'South Africa': 'Pretoria',
}

SYMBOLS = {
    'gold': 'Au', 'silver': 'Ag', 'iron': 'Fe', 'copper': 'Cu', 'oxygen': 'O', 'hydrogen': 'H', 'carbon': 'C',
    'nitrogen': 'N', 'sodium': 'Na', 'potassium': 'K', 'calcium': 'Ca', 'helium': 'He', 'neon': 'Ne', 'lead': 'Pb',
    'tin': 'Sn', 'zinc': 'Zn', 'mercury': 'Hg', 'sulfur': 'S', 'chlorine': 'Cl', 'magnesium': 'Mg', 'aluminum': 'Al',
    'uranium': 'U', 'platinum': 'Pt', 'nickel': 'Ni', 'lithium': 'Li', 'iodine': 'I', 'fluorine': 'F',
    'silicon': 'Si', 'phosphorus': 'P', 'argon': 'Ar', 'cobalt': 'Co', 'chromium': 'Cr', 'manganese': 'Mn',
    'titanium': 'Ti', 'tungsten': 'W', 'boron': 'B', 'beryllium': 'Be', 'krypton': 'Kr', 'xenon': 'Xe', 'radon': 'Rn',
    'bromine': 'Br', 'arsenic': 'As', 'barium': 'Ba', 'bismuth': 'Bi', 'cadmium': 'Cd', 'cesium': 'Cs',
    'gallium': 'Ga', 'germanium': 'Ge', 'plutonium': 'Pu', 'radium': 'Ra', 'selenium': 'Se', 'strontium': 'Sr',
    'antimony': 'Sb', 'osmium': 'Os', 'iridium': 'Ir', 'palladium': 'Pd', 'rubidium': 'Rb', 'vanadium': 'V',
    'zirconium': 'Zr', 'thorium': 'Th',
}

PLURALS = {
    'mouse': 'mice', 'child': 'children', 'man': 'men', 'woman': 'women', 'tooth': 'teeth', 'foot': 'feet',
    'goose': 'geese', 'person': 'people', 'ox': 'oxen', 'cactus': 'cacti', 'leaf': 'leaves', 'knife': 'knives',
    'wolf': 'wolves', 'half': 'halves', 'city': 'cities', 'baby': 'babies', 'box': 'boxes', 'bus': 'buses',
    'church': 'churches', 'potato': 'potatoes', 'tomato': 'tomatoes', 'hero': 'heroes', 'fish': 'fish',
    'sheep': 'sheep', 'deer': 'deer', 'life': 'lives', 'wife': 'wives', 'thief': 'thieves', 'loaf': 'loaves',
    'shelf': 'shelves', 'louse': 'lice', 'fungus': 'fungi', 'nucleus': 'nuclei', 'crisis': 'crises',
    'thesis': 'theses', 'analysis': 'analyses', 'phenomenon': 'phenomena', 'criterion': 'criteria', 'datum': 'data',
    'medium': 'media', 'calf': 'calves', 'elf': 'elves', 'scarf': 'scarves', 'hoof': 'hooves', 'party': 'parties',
    'lady': 'ladies', 'story': 'stories', 'fox': 'foxes', 'dish': 'dishes', 'watch': 'watches', 'glass': 'glasses',
    'class': 'classes', 'kiss': 'kisses', 'echo': 'echoes', 'volcano': 'volcanoes', 'index': 'indices',
    'appendix': 'appendices', 'moose': 'moose', 'salmon': 'salmon', 'series': 'series',
}

OPPOSITES = {
    'hot': 'cold', 'big': 'small', 'fast': 'slow', 'happy': 'sad', 'light': 'dark', 'up': 'down', 'old': 'young',
    'rich': 'poor', 'strong': 'weak', 'early': 'late', 'open': 'closed', 'hard': 'soft', 'high': 'low',
    'long': 'short', 'wet': 'dry', 'full': 'empty', 'loud': 'quiet', 'thick': 'thin', 'heavy': 'light',
    'clean': 'dirty', 'good': 'bad', 'true': 'false', 'win': 'lose', 'love': 'hate', 'begin': 'end', 'push': 'pull',
    'buy': 'sell', 'day': 'night', 'black': 'white', 'north': 'south', 'east': 'west', 'left': 'right', 'in': 'out',
    'on': 'off', 'yes': 'no', 'always': 'never', 'before': 'after', 'inside': 'outside', 'above': 'below',
    'near': 'far', 'cheap': 'expensive', 'safe': 'dangerous', 'easy': 'difficult', 'friend': 'enemy',
    'wide': 'narrow', 'deep': 'shallow', 'sharp': 'dull', 'sweet': 'sour', 'smooth': 'rough', 'arrive': 'leave',
    'remember': 'forget', 'accept': 'reject', 'increase': 'decrease', 'question': 'answer', 'victory': 'defeat',
    'alive': 'dead', 'awake': 'asleep', 'tall': 'short', 'brave': 'cowardly', 'polite': 'rude',
}

CONTINENTS = {
    'France': 'Europe', 'Germany': 'Europe', 'Italy': 'Europe', 'Spain': 'Europe', 'Portugal': 'Europe',
    'Russia': 'Europe', 'Greece': 'Europe', 'Norway': 'Europe', 'Sweden': 'Europe', 'Finland': 'Europe',
    'Denmark': 'Europe', 'Poland': 'Europe', 'Austria': 'Europe', 'Hungary': 'Europe', 'Ireland': 'Europe',
    'Belgium': 'Europe', 'the Netherlands': 'Europe', 'Ukraine': 'Europe', 'the Czech Republic': 'Europe',
    'Romania': 'Europe', 'Bulgaria': 'Europe', 'Serbia': 'Europe', 'Croatia': 'Europe', 'Switzerland': 'Europe',
    'Iceland': 'Europe', 'Estonia': 'Europe', 'Latvia': 'Europe', 'Lithuania': 'Europe', 'Belarus': 'Europe',
    'Slovakia': 'Europe', 'Slovenia': 'Europe', 'Luxembourg': 'Europe', 'Albania': 'Europe', 'Moldova': 'Europe',
    'Malta': 'Europe', 'the United Kingdom': 'Europe', 'Scotland': 'Europe', 'Wales': 'Europe', 'Monaco': 'Europe',
    'Andorra': 'Europe', 'Japan': 'Asia', 'China': 'Asia', 'India': 'Asia', 'Thailand': 'Asia', 'Vietnam': 'Asia',
    'Indonesia': 'Asia', 'the Philippines': 'Asia', 'South Korea': 'Asia', 'North Korea': 'Asia', 'Iran': 'Asia',
    'Iraq': 'Asia', 'Saudi Arabia': 'Asia', 'Israel': 'Asia', 'Pakistan': 'Asia', 'Bangladesh': 'Asia',
    'Nepal': 'Asia', 'Afghanistan': 'Asia', 'Syria': 'Asia', 'Lebanon': 'Asia', 'Jordan': 'Asia', 'Qatar': 'Asia',
    'Mongolia': 'Asia', 'Singapore': 'Asia', 'Cambodia': 'Asia', 'Sri Lanka': 'Asia', 'Kazakhstan': 'Asia',
    'Malaysia': 'Asia', 'Laos': 'Asia', 'Myanmar': 'Asia', 'Taiwan': 'Asia', 'Bhutan': 'Asia', 'Yemen': 'Asia',
    'Oman': 'Asia', 'Kuwait': 'Asia', 'Uzbekistan': 'Asia', 'Kenya': 'Africa', 'Egypt': 'Africa', 'Nigeria': 'Africa',
    'Ethiopia': 'Africa', 'Ghana': 'Africa', 'Morocco': 'Africa', 'Algeria': 'Africa', 'Tunisia': 'Africa',
    'Zimbabwe': 'Africa', 'Uganda': 'Africa', 'Tanzania': 'Africa', 'Senegal': 'Africa', 'Sudan': 'Africa',
    'Libya': 'Africa', 'Angola': 'Africa', 'South Africa': 'Africa', 'Somalia': 'Africa', 'Rwanda': 'Africa',
    'Zambia': 'Africa', 'Malawi': 'Africa', 'Mozambique': 'Africa', 'Namibia': 'Africa', 'Botswana': 'Africa',
    'Madagascar': 'Africa', 'Cameroon': 'Africa', 'Mali': 'Africa', 'Niger': 'Africa', 'Chad': 'Africa',
    'Guinea': 'Africa', 'Liberia': 'Africa', 'Sierra Leone': 'Africa', 'Ivory Coast': 'Africa', 'Togo': 'Africa',
    'Benin': 'Africa', 'Gabon': 'Africa', 'Congo': 'Africa', 'Eritrea': 'Africa', 'Mauritania': 'Africa',
    'Canada': 'North America', 'Mexico': 'North America', 'Cuba': 'North America', 'Jamaica': 'North America',
    'Panama': 'North America', 'the United States': 'North America', 'Haiti': 'North America',
    'Honduras': 'North America', 'Guatemala': 'North America', 'Nicaragua': 'North America',
    'Costa Rica': 'North America', 'El Salvador': 'North America', 'Belize': 'North America',
    'the Dominican Republic': 'North America', 'Argentina': 'South America', 'Peru': 'South America',
    'Chile': 'South America', 'Colombia': 'South America', 'Venezuela': 'South America', 'Uruguay': 'South America',
    'Paraguay': 'South America', 'Bolivia': 'South America', 'Ecuador': 'South America', 'Brazil': 'South America',
    'Guyana': 'South America', 'Suriname': 'South America', 'Australia': 'Oceania', 'New Zealand': 'Oceania',
    'Fiji': 'Oceania', 'Papua New Guinea': 'Oceania',
}

CURRENCIES = {
    'Japan': 'yen', 'China': 'yuan', 'India': 'rupee', 'the United States': 'dollar', 'the United Kingdom': 'pound',
    'Russia': 'ruble', 'Mexico': 'peso', 'Brazil': 'real', 'South Korea': 'won', 'Switzerland': 'franc',
    'Sweden': 'krona', 'Norway': 'krone', 'Denmark': 'krone', 'Poland': 'zloty', 'Turkey': 'lira', 'Thailand': 'baht',
    'Vietnam': 'dong', 'Indonesia': 'rupiah', 'the Philippines': 'peso', 'Israel': 'shekel', 'South Africa': 'rand',
    'Egypt': 'pound', 'Nigeria': 'naira', 'Kenya': 'shilling', 'Canada': 'dollar', 'Australia': 'dollar',
    'Argentina': 'peso', 'Chile': 'peso', 'Colombia': 'peso', 'Pakistan': 'rupee', 'Saudi Arabia': 'riyal',
    'Iran': 'rial', 'Hungary': 'forint', 'the Czech Republic': 'koruna', 'Ukraine': 'hryvnia', 'Malaysia': 'ringgit',
    'Germany': 'euro', 'France': 'euro', 'Italy': 'euro', 'Spain': 'euro', 'Greece': 'euro', 'Portugal': 'euro',
    'Ireland': 'euro', 'Finland': 'euro', 'Austria': 'euro', 'Belgium': 'euro', 'the Netherlands': 'euro',
    'Peru': 'sol', 'Iceland': 'krona', 'Bangladesh': 'taka', 'Morocco': 'dirham',
    'the United Arab Emirates': 'dirham', 'Romania': 'leu', 'Bulgaria': 'lev', 'Ghana': 'cedi', 'Ethiopia': 'birr',
    'Cuba': 'peso', 'New Zealand': 'dollar', 'Singapore': 'dollar', 'Jamaica': 'dollar', 'Sri Lanka': 'rupee',
    'Nepal': 'rupee', 'Cambodia': 'riel', 'Mongolia': 'tugrik',
}

LANGUAGES = {
    'France': 'French', 'Germany': 'German', 'Italy': 'Italian', 'Spain': 'Spanish', 'Portugal': 'Portuguese',
    'Brazil': 'Portuguese', 'Mexico': 'Spanish', 'Argentina': 'Spanish', 'Japan': 'Japanese', 'China': 'Chinese',
    'South Korea': 'Korean', 'Russia': 'Russian', 'Greece': 'Greek', 'Turkey': 'Turkish', 'Poland': 'Polish',
    'the Netherlands': 'Dutch', 'Sweden': 'Swedish', 'Norway': 'Norwegian', 'Denmark': 'Danish', 'Finland': 'Finnish',
    'Hungary': 'Hungarian', 'the Czech Republic': 'Czech', 'Romania': 'Romanian', 'Ukraine': 'Ukrainian',
    'Israel': 'Hebrew', 'Iran': 'Persian', 'Thailand': 'Thai', 'Vietnam': 'Vietnamese', 'Indonesia': 'Indonesian',
    'Egypt': 'Arabic', 'Saudi Arabia': 'Arabic', 'Iceland': 'Icelandic', 'Bulgaria': 'Bulgarian', 'Serbia': 'Serbian',
    'Croatia': 'Croatian', 'Austria': 'German', 'Colombia': 'Spanish', 'Peru': 'Spanish', 'Chile': 'Spanish',
    'Cuba': 'Spanish', 'Pakistan': 'Urdu', 'Bangladesh': 'Bengali', 'Ethiopia': 'Amharic', 'Kenya': 'Swahili',
    'Mongolia': 'Mongolian', 'Latvia': 'Latvian', 'Lithuania': 'Lithuanian', 'Estonia': 'Estonian',
    'Georgia': 'Georgian', 'Armenia': 'Armenian', 'Malaysia': 'Malay', 'the Philippines': 'Filipino',
    'Cambodia': 'Khmer', 'Laos': 'Lao', 'Nepal': 'Nepali', 'Slovakia': 'Slovak', 'Slovenia': 'Slovenian',
    'Albania': 'Albanian', 'Venezuela': 'Spanish', 'Ecuador': 'Spanish', 'Bolivia': 'Spanish', 'Uruguay': 'Spanish',
    'Paraguay': 'Spanish', 'Morocco': 'Arabic', 'Iraq': 'Arabic', 'Syria': 'Arabic', 'Jordan': 'Arabic',
    'Lebanon': 'Arabic', 'Algeria': 'Arabic', 'Tunisia': 'Arabic', 'Libya': 'Arabic', 'Sudan': 'Arabic',
    'Yemen': 'Arabic', 'Oman': 'Arabic', 'Qatar': 'Arabic', 'Kuwait': 'Arabic', 'Afghanistan': 'Pashto',
    'Kazakhstan': 'Kazakh', 'Uzbekistan': 'Uzbek', 'Belarus': 'Belarusian', 'Moldova': 'Romanian', 'Haiti': 'French',
    'Senegal': 'French', 'Mali': 'French', 'Madagascar': 'Malagasy', 'Somalia': 'Somali', 'Tanzania': 'Swahili',
    'Myanmar': 'Burmese', 'Sri Lanka': 'Sinhala', 'Azerbaijan': 'Azerbaijani', 'Ireland': 'English',
    'Australia': 'English', 'New Zealand': 'English', 'Jamaica': 'English', 'the United States': 'English',
    'the United Kingdom': 'English', 'Canada': 'English',
}

AUTHORS = {
    'Romeo and Juliet': 'William Shakespeare', 'Hamlet': 'William Shakespeare', 'Macbeth': 'William Shakespeare',
    'Pride and Prejudice': 'Jane Austen', 'Emma': 'Jane Austen', '1984': 'George Orwell',
    'Animal Farm': 'George Orwell', 'War and Peace': 'Leo Tolstoy', 'Anna Karenina': 'Leo Tolstoy',
    'Don Quixote': 'Miguel de Cervantes', 'The Odyssey': 'Homer', 'The Iliad': 'Homer',
    'Oliver Twist': 'Charles Dickens', 'Great Expectations': 'Charles Dickens',
    'A Christmas Carol': 'Charles Dickens', 'Moby-Dick': 'Herman Melville', 'The Great Gatsby': 'F. Scott Fitzgerald',
    'Frankenstein': 'Mary Shelley', 'Dracula': 'Bram Stoker', 'Crime and Punishment': 'Fyodor Dostoevsky',
    'The Divine Comedy': 'Dante Alighieri', 'Les Miserables': 'Victor Hugo',
    'The Adventures of Tom Sawyer': 'Mark Twain', 'Adventures of Huckleberry Finn': 'Mark Twain',
    'Harry Potter': 'J.K. Rowling', 'The Hobbit': 'J.R.R. Tolkien', 'The Lord of the Rings': 'J.R.R. Tolkien',
    'To Kill a Mockingbird': 'Harper Lee', 'The Old Man and the Sea': 'Ernest Hemingway',
    'Jane Eyre': 'Charlotte Bronte', 'Wuthering Heights': 'Emily Bronte',
    "Alice's Adventures in Wonderland": 'Lewis Carroll', 'The Origin of Species': 'Charles Darwin',
    'Faust': 'Johann Wolfgang von Goethe', 'The Little Prince': 'Antoine de Saint-Exupery',
    'Robinson Crusoe': 'Daniel Defoe', "Gulliver's Travels": 'Jonathan Swift',
    'The Catcher in the Rye': 'J.D. Salinger', 'Brave New World': 'Aldous Huxley', 'The Raven': 'Edgar Allan Poe',
}


TABLES = {t.name: t for t in (
    FactTable("capital", "reasoning", CAPITALS, ("What is the capital of {k}?", "Tell me the capital of {k}."),
              "The capital of {k} is {v}."),
    FactTable("symbol", "reasoning", SYMBOLS, ("What is the chemical symbol for {k}?",
                                               "Tell me the chemical symbol for {k}.",
                                               "Which chemical symbol stands for {k}?"),
              "The chemical symbol for {k} is {v}."),
    FactTable("plural", "reasoning", PLURALS, ("What is the plural of {k}?", "Tell me the plural of {k}."),
              "The plural of {k} is {v}."),
    FactTable("opposite", "reasoning", OPPOSITES, ("What is the opposite of {k}?", "Tell me the opposite of {k}.",
                                                   "What word means the opposite of {k}?"),
              "The opposite of {k} is {v}."),
    FactTable("continent", "general", CONTINENTS, ("Which continent is {k} in?", "On which continent is {k}?"),
              "{K} is in {v}."),
    FactTable("currency", "general", CURRENCIES, ("What is the currency of {k}?", "Which currency is used in {k}?"),
              "The currency of {k} is the {v}."),
    FactTable("language", "general", LANGUAGES, ("What language is spoken in {k}?",
                                                 "Which language do people speak in {k}?"),
              "The language spoken in {k} is {v}"),
    FactTable("author", "general", AUTHORS, ("Who wrote {k}?", "Who is the author of {k}?"), "{K} was written by {v}."),
)}
